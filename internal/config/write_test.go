package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func roundTrip(t *testing.T, c *Config) *Config {
	t.Helper()
	var buf bytes.Buffer
	if err := c.WriteTOML(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := Parse(buf.Bytes(), "effective.toml")
	if err != nil {
		t.Fatalf("WriteTOML output does not load: %v\n%s", err, buf.String())
	}
	return back
}

func TestWriteTOMLRoundTrip(t *testing.T) {
	odd := Default()
	odd.Hostname = "mx-1.example.org"
	odd.Log = Log{Format: "json", Level: "debug"}
	odd.Store.MountMarker = ""
	odd.Store.QuotaAction = "defer"
	odd.Store.TmpMaxAge = Duration(90 * time.Minute)
	odd.Store.EstaleRetries = 0
	odd.UserDB.PasswdFile = "/etc/nf \"s\\drop/ü\tusers\x01\x7f"
	odd.UserDB.Maildir = "."
	odd.UserDB.RecipientDelimiter = "+-"
	odd.UserDB.DefaultDomain = "example.org"
	odd.UserDB.QuotaStorage = 1500
	odd.UserDB.QuotaMessages = 1 << 40
	odd.LMTP.Listen = []string{"tcp:[::1]:24", "unix:/run/a b"}
	odd.LMTP.MaxMessageSize = 3 * GiB
	odd.LMTP.ReadTimeout = Duration(1500 * time.Millisecond)
	odd.LMTP.DeliveredTo = "always"
	odd.POP3.Listen = []string{":110"}
	odd.POP3.ListenTLS = []string{":995"}
	odd.POP3.TLSCert, odd.POP3.TLSKey = "/c.pem", "/k.pem"
	odd.POP3.STLS = true
	odd.POP3.AllowPlaintext = true
	odd.POP3.TrustedNetworks = []string{"10.0.0.0/8", "::1"}
	odd.POP3.ProxyNetworks = []string{"192.0.2.0/24"}
	odd.POP3.AuthFailDelay = 0
	odd.POP3.MoveToCur = true
	odd.POP3.UIDLFormat = "courier"
	odd.Metrics.Listen = "tcp:127.0.0.1:9100"
	odd.Store.Volumes = []Volume{
		{Name: "filer1", Path: "/var/mail/nfsdrop/f1", NewMailboxes: true},
		{Name: "filer-2", Path: "/var/mail/nfsdrop/f2", MountMarker: "m \"x\"", NewMailboxes: false},
	}
	odd.Store.VolumeCallWait = Duration(1500 * time.Millisecond)
	if err := odd.Validate(); err != nil {
		t.Fatal(err)
	}

	parsed, err := Parse(doc("[lmtp]", `max_recipients = 7`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	contrib, err := Load(contribPath)
	if err != nil {
		t.Fatal(err)
	}

	for name, c := range map[string]Config{
		"default": Default(),
		"odd":     odd,
		"parsed":  *parsed,
		"contrib": *contrib,
	} {
		t.Run(name, func(t *testing.T) {
			if back := roundTrip(t, &c); !equalConfig(*back, c) {
				t.Errorf("round trip changed the configuration:\ngot  %+v\nwant %+v", *back, c)
			}
		})
	}
}

func TestWriteTOMLEveryKey(t *testing.T) {
	c, err := Parse(doc(`hostname = "mx1"`, "[lmtp]", `max_recipients = 7`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.WriteTOML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	back, err := Parse(buf.Bytes(), "effective.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range schema() {
		for _, f := range sec.fields {
			if !back.src.defined[f.path] {
				t.Errorf("key %s missing from WriteTOML output", f.path)
			}
		}
	}
	for _, tt := range []struct{ line string }{
		{`hostname = "mx1"` + "\n"},
		{`max_recipients = 7` + "\n"},
		{`max_connections = 200  # default` + "\n"},
		{`[pop3]` + "\n"},
		{`listen = []  # default` + "\n"},
	} {
		if !strings.Contains(out, tt.line) {
			t.Errorf("output lacks %q:\n%s", tt.line, out)
		}
	}
}

func TestWriteTOMLNilSlices(t *testing.T) {
	c := Default()
	c.LMTP.Listen = nil
	c.POP3.TrustedNetworks = nil
	back := roundTrip(t, &c)
	if len(back.LMTP.Listen) != 0 || len(back.POP3.TrustedNetworks) != 0 {
		t.Errorf("nil slices came back as %q, %q", back.LMTP.Listen, back.POP3.TrustedNetworks)
	}
}
