package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ByteSize is a number of bytes. In the file it is an integer number of bytes
// or a string holding an integer with an optional binary suffix: "512K",
// "50M", "1G", "2T" (K = 1024, M = 1024 K, and so on; upper or lower case),
// or "0".
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

// sizeUnits is ordered from the largest unit to the smallest, for String.
func sizeUnits() [4]struct {
	suffix byte
	size   ByteSize
} {
	return [4]struct {
		suffix byte
		size   ByteSize
	}{{'T', TiB}, {'G', GiB}, {'M', MiB}, {'K', KiB}}
}

// ParseByteSize parses a size as written in the configuration file: digits
// with an optional K, M, G or T suffix.
func ParseByteSize(s string) (ByteSize, error) {
	digits := s
	unit := ByteSize(1)
	if n := len(s); n > 0 {
		for _, u := range sizeUnits() {
			if s[n-1] == u.suffix || s[n-1] == u.suffix+('a'-'A') {
				digits, unit = s[:n-1], u.size
				break
			}
		}
	}
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, fmt.Errorf("invalid size %q: want an integer with an optional K, M, G or T suffix, like \"50M\"", s)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64/int64(unit) {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return ByteSize(n) * unit, nil
}

// String returns the size in the shortest exact form that ParseByteSize
// accepts: "50M", "1G", "1500" (bytes), "0".
func (b ByteSize) String() string {
	if b != 0 {
		for _, u := range sizeUnits() {
			if b%u.size == 0 {
				return strconv.FormatInt(int64(b/u.size), 10) + string(u.suffix)
			}
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalText implements encoding.TextMarshaler; the result is String.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseByteSize. The
// TOML decoder also passes integers through it, as decimal text.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Duration is a time.Duration written in the file as a string in Go's
// syntax: "90s", "5m", "36h", "1h30m", "500ms". Negative durations are
// refused.
type Duration time.Duration

// ParseDuration parses a duration as written in the configuration file.
func ParseDuration(s string) (Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a number with a unit (h, m, s, ms), like \"5m\" or \"1h30m\"", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return Duration(d), nil
}

// String returns the duration in a short form that ParseDuration accepts:
// "36h", "1h30m", "10m", "2s", "1500ms", "0s", with no zero components.
func (d Duration) String() string {
	if d < 0 {
		return time.Duration(d).String()
	}
	if d == 0 {
		return "0s"
	}
	td := time.Duration(d)
	if td%time.Second != 0 {
		for _, u := range []struct {
			unit time.Duration
			name string
		}{{time.Millisecond, "ms"}, {time.Microsecond, "us"}} {
			if td%u.unit == 0 {
				return strconv.FormatInt(int64(td/u.unit), 10) + u.name
			}
		}
		return strconv.FormatInt(int64(td), 10) + "ns"
	}
	var b strings.Builder
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := td / u.unit; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10))
			b.WriteString(u.name)
			td -= n * u.unit
		}
	}
	return b.String()
}

// MarshalText implements encoding.TextMarshaler; the result is String.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseDuration.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := ParseDuration(string(text))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
