package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ByteSize
		err  string
	}{
		{"0", 0, ""},
		{"1500", 1500, ""},
		{"512K", 512 * KiB, ""},
		{"512k", 512 * KiB, ""},
		{"50M", 50 << 20, ""},
		{"1G", 1 << 30, ""},
		{"2T", 2 << 40, ""},
		{"", 0, "invalid size"},
		{"M", 0, "invalid size"},
		{"50Q", 0, "invalid size"},
		{"50 M", 0, "invalid size"},
		{"50MB", 0, "invalid size"},
		{"1.5G", 0, "invalid size"},
		{"-1", 0, "invalid size"},
		{"+1", 0, "invalid size"},
		{"0x10", 0, "invalid size"},
		{"9223372036854775807", 1<<63 - 1, ""},
		{"9223372036854775808", 0, "too large"},
		{"8388608T", 0, "too large"},
	} {
		got, err := ParseByteSize(tt.in)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("ParseByteSize(%q): %v", tt.in, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseByteSize(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
		case err == nil && got != tt.want:
			t.Errorf("ParseByteSize(%q) = %d; want %d", tt.in, got, tt.want)
		}
	}
}

func TestByteSizeString(t *testing.T) {
	for _, tt := range []struct {
		in   ByteSize
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1500, "1500"},
		{KiB, "1K"},
		{1536 * KiB, "1536K"},
		{50 * MiB, "50M"},
		{1024 * MiB, "1G"},
		{3 * TiB, "3T"},
		{1<<63 - 1, "9223372036854775807"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("ByteSize(%d).String() = %q; want %q", int64(tt.in), got, tt.want)
		}
		back, err := ParseByteSize(tt.in.String())
		if err != nil || back != tt.in {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tt.in.String(), back, err, tt.in)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"0", 0, ""},
		{"0s", 0, ""},
		{"36h", 36 * time.Hour, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"500ms", 500 * time.Millisecond, ""},
		{"", 0, "invalid duration"},
		{"5", 0, "invalid duration"},
		{"5 m", 0, "invalid duration"},
		{"1d", 0, "invalid duration"},
		{"-5m", 0, "must not be negative"},
	} {
		got, err := ParseDuration(tt.in)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("ParseDuration(%q): %v", tt.in, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseDuration(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
		case err == nil && time.Duration(got) != tt.want:
			t.Errorf("ParseDuration(%q) = %v; want %v", tt.in, got, tt.want)
		}
	}
}

func TestDurationString(t *testing.T) {
	for _, tt := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{time.Second, "1s"},
		{90 * time.Second, "1m30s"},
		{10 * time.Minute, "10m"},
		{36 * time.Hour, "36h"},
		{time.Hour + time.Second, "1h1s"},
		{1500 * time.Millisecond, "1500ms"},
		{3 * time.Microsecond, "3us"},
		{7, "7ns"},
	} {
		d := Duration(tt.in)
		if got := d.String(); got != tt.want {
			t.Errorf("Duration(%v).String() = %q; want %q", tt.in, got, tt.want)
		}
		back, err := ParseDuration(d.String())
		if err != nil || back != d {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", d.String(), back, err, tt.in)
		}
	}
}
