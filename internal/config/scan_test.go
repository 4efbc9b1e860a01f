package config

import (
	"testing"
	"time"
)

func TestValidateScan(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
		want []string // substrings, one per error, in order; none: valid
	}{
		{"enabled, defaults fit", doc("[lmtp]", `max_message_size = "25M"`, "[scan]", "enabled = true"), nil},
		{"enabled skip", doc("[scan]", "enabled = true", `on_too_large = "skip"`), nil},
		{"enabled, size unknown", doc("[scan]", "enabled = true", "stream_max_length = 0"), nil},
		{"enabled, too small for max_message_size", doc("[scan]", "enabled = true"), []string{
			`x.toml: key scan.stream_max_length (default): "25M" is less than lmtp.max_message_size ("50M"): with scan.on_too_large = "tempfail"`,
		}},
		{"disabled: size not checked", doc("[scan]", `stream_max_length = "1M"`), nil},
		{"addresses", doc("[scan]", `clamd = ["unix:/run/clamav/clamd.ctl", "tcp:127.0.0.1:3310", "clamd.example.org:3310", "[::1]:3310"]`), nil},
		{"no address, disabled", doc("[scan]", `clamd = []`), nil},
		{"no address, enabled", doc("[scan]", "enabled = true", `clamd = []`, `on_too_large = "skip"`), []string{
			`x.toml:3: key scan.clamd: must list at least one address when scan.enabled is true`,
		}},
		{"address relative", doc("[scan]", `clamd = ["unix:clamd.ctl"]`), []string{`x.toml:2: key scan.clamd: "unix:clamd.ctl": the socket path must be absolute`}},
		{"address without host", doc("[scan]", `clamd = ["tcp::3310"]`), []string{`x.toml:2: key scan.clamd: "tcp::3310": a clamd address must name its host`}},
		{"address without port", doc("[scan]", `clamd = ["tcp:localhost"]`), []string{`x.toml:2: key scan.clamd: "tcp:localhost" is not`}},
		{"address twice", doc("[scan]", `clamd = ["tcp:127.0.0.1:3310", "127.0.0.1:3310"]`), []string{`x.toml:2: key scan.clamd: "127.0.0.1:3310" is listed twice`}},
		{"timeout", doc("[scan]", `timeout = "500ms"`), []string{`x.toml:2: key scan.timeout: must be at least "1s", got "500ms"`}},
		{"action", doc("[scan]", `action = "drop"`), []string{`x.toml:2: key scan.action: must be "reject", "quarantine" or "tag", got "drop"`}},
		{"action tag", doc("[scan]", `action = "tag"`), nil},
		{"quarantine", doc("[scan]", `action = "quarantine"`, `quarantine_maildir = "/var/mail/nfsdrop/quarantine/Maildir"`), nil},
		{"quarantine without maildir", doc("[scan]", `action = "quarantine"`), []string{`x.toml: key scan.quarantine_maildir (default): must be set when scan.action is "quarantine"`}},
		{"quarantine relative", doc("[scan]", `quarantine_maildir = "quarantine"`), []string{`x.toml:2: key scan.quarantine_maildir: "quarantine" must be an absolute path`}},
		{"quarantine unclean", doc("[scan]", `quarantine_maildir = "/var/mail/nfsdrop/q/"`), []string{`x.toml:2: key scan.quarantine_maildir: "/var/mail/nfsdrop/q/" must be a clean path`}},
		{"quarantine outside", doc("[scan]", `quarantine_maildir = "/var/quarantine"`), []string{`x.toml:2: key scan.quarantine_maildir: "/var/quarantine" must be inside store.mail_root ("/var/mail/nfsdrop")`}},
		{"quarantine prefix only", doc("[scan]", `quarantine_maildir = "/var/mail/nfsdrop2/q"`), []string{`x.toml:2: key scan.quarantine_maildir:`}},
		{"quarantine is mail_root", doc("[scan]", `quarantine_maildir = "/var/mail/nfsdrop"`), []string{`x.toml:2: key scan.quarantine_maildir:`}},
		{"quarantine under another root", doc("[store]", `mail_root = "/srv/mail"`, "[scan]", `quarantine_maildir = "/srv/mail/q"`), nil},
		{"on_too_large", doc("[scan]", `on_too_large = "accept"`), []string{`x.toml:2: key scan.on_too_large: must be "tempfail" or "skip", got "accept"`}},
		{"types", doc("[scan]", `enabled = "yes"`, `stream_max_length = "25MB"`), []string{
			`x.toml:2: key scan.enabled: expected a boolean`,
			`x.toml:3: key scan.stream_max_length: invalid size "25MB"`,
		}},
		{"unknown key", doc("[scan]", `fail_opn = true`), []string{`x.toml:2: unknown key "scan.fail_opn" (did you mean "scan.fail_open"?)`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.data, "x.toml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErrors(t, err, tt.want...)
		})
	}
}

func TestScanDefaults(t *testing.T) {
	c, err := Parse(doc("[scan]", "enabled = true", `clamd = ["tcp:127.0.0.1:3310"]`, `stream_max_length = "50M"`, "fail_open = true"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Scan
	if !s.Enabled || len(s.Clamd) != 1 || s.Clamd[0] != "tcp:127.0.0.1:3310" || s.StreamMaxLength != 50*MiB || !s.FailOpen {
		t.Errorf("file values: %+v", s)
	}
	if s.Timeout != Duration(30*time.Second) || s.Action != "reject" || s.OnTooLarge != "tempfail" || s.QuarantineMaildir != "" {
		t.Errorf("defaults: %+v", s)
	}
}
