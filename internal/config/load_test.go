package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// doc joins lines into a TOML document, so that line numbers can be read
// off the test: the first line is line 1.
func doc(lines ...string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

// wantErrors checks that err holds each of want, as substrings of its lines,
// and no other line.
func wantErrors(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %q", want)
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d errors:\n%s\nwant %d: %q", len(got), err, len(want), want)
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("error %d = %q; want it to contain %q", i+1, got[i], want[i])
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
		want []string // one substring per error, in order
	}{
		{
			name: "unknown key",
			data: doc(
				"# comment",
				"[store]",
				`mail_root = "/srv/mail"`,
				`mail_rot = "/srv/mail"`,
			),
			want: []string{`x.toml:4: unknown key "store.mail_rot" (did you mean "store.mail_root"?)`},
		},
		{
			name: "unknown key far down",
			data: doc(
				"[log]", `level = "info"`, "", "[lmtp]", "", "", "", "", "", "",
				`max_recipients = 10`,
				`max_recipient = 10`,
			),
			want: []string{`x.toml:12: unknown key "lmtp.max_recipient"`},
		},
		{
			name: "unknown top-level key",
			data: doc(`hostnme = "mx1"`),
			want: []string{`x.toml:1: unknown key "hostnme" (did you mean "hostname"?)`},
		},
		{
			name: "unknown section",
			data: doc(`hostname = "mx1"`, "", "[smtp]", `listen = ":25"`),
			want: []string{`x.toml:3: unknown section "smtp"`},
		},
		{
			name: "unknown section through dotted header",
			data: doc("", "[tls.server]", `cert = "x"`),
			want: []string{`x.toml:2: unknown section "tls"`},
		},
		{
			name: "unknown subtable",
			data: doc("[store]", "[store.nfs]", "actimeo = 0"),
			want: []string{`x.toml:2: unknown key "store.nfs"`},
		},
		{
			name: "misspelt section",
			data: doc("[stor]", `mail_root = "/x"`),
			want: []string{`x.toml:1: unknown section "stor" (did you mean "store"?)`},
		},
		{
			name: "keys are case-sensitive",
			data: doc("[store]", `Mail_Root = "/x"`),
			want: []string{`x.toml:2: unknown key "store.Mail_Root" (keys are case-sensitive: did you mean "store.mail_root"?)`},
		},
		{
			name: "top-level key after a section",
			data: doc("[log]", `level = "info"`, `hostname = "mx1"`),
			want: []string{`x.toml:3: unknown key "log.hostname" (did you mean "hostname"? Top-level keys must come before the first [section])`},
		},
		{
			name: "key in the wrong section",
			data: doc("[lmtp]", `idle_timeout = "10m"`),
			want: []string{`x.toml:2: unknown key "lmtp.idle_timeout" (did you mean "idle_timeout" in [pop3]?)`},
		},
		{
			name: "string for integer",
			data: doc("[store]", "", `estale_retries = "3"`),
			want: []string{`x.toml:3: key store.estale_retries: expected an integer, got string "3"`},
		},
		{
			name: "integer for string",
			data: doc("[log]", "level = 1"),
			want: []string{`x.toml:2: key log.level: expected a string, got integer 1`},
		},
		{
			name: "string for boolean",
			data: doc("[pop3]", `stls = "yes"`),
			want: []string{`x.toml:2: key pop3.stls: expected a boolean (true or false), got string "yes"`},
		},
		{
			name: "string for array",
			data: doc("[lmtp]", `listen = "unix:/run/lmtp"`),
			want: []string{`x.toml:2: key lmtp.listen: expected an array of strings, got string "unix:/run/lmtp"`},
		},
		{
			name: "array element",
			data: doc("[lmtp]", `listen = [`, `  "unix:/run/lmtp",`, `  24,`, `]`),
			want: []string{`x.toml:2: key lmtp.listen: element 2: expected a string, got integer 24`},
		},
		{
			name: "section is not a table",
			data: doc(`store = "/srv/mail"`),
			want: []string{`x.toml:1: key store: expected a table ([store]), got string "/srv/mail"`},
		},
		{
			name: "scalar key is a table",
			data: doc(`[store.mail_root]`, `path = "/x"`),
			want: []string{`x.toml:1: key store.mail_root: expected a string, got a table`},
		},
		{
			name: "bad size string",
			data: doc("[lmtp]", `max_message_size = "50MB"`),
			want: []string{`x.toml:2: key lmtp.max_message_size: invalid size "50MB"`},
		},
		{
			name: "negative size",
			data: doc("[userdb]", `quota_storage = -1`),
			want: []string{`x.toml:2: key userdb.quota_storage: invalid size -1: must not be negative`},
		},
		{
			name: "float size",
			data: doc("[userdb]", `quota_storage = 1.5`),
			want: []string{`x.toml:2: key userdb.quota_storage: expected a size (integer bytes or a string like "50M"), got float 1.5`},
		},
		{
			name: "bad duration string",
			data: doc("[lmtp]", `read_timeout = "10 minutes"`),
			want: []string{`x.toml:2: key lmtp.read_timeout: invalid duration "10 minutes"`},
		},
		{
			name: "negative duration",
			data: doc("[pop3]", `auth_fail_delay = "-1s"`),
			want: []string{`x.toml:2: key pop3.auth_fail_delay: invalid duration "-1s": must not be negative`},
		},
		{
			name: "integer duration",
			data: doc("[pop3]", `lock_stale = 300`),
			want: []string{`x.toml:2: key pop3.lock_stale: expected a duration string like "5m", got integer 300`},
		},
		{
			name: "dotted keys",
			data: doc(`store.mail_rot = "/x"`, `lmtp.max_recipients = "x"`),
			want: []string{
				`x.toml:1: unknown key "store.mail_rot"`,
				`x.toml:2: key lmtp.max_recipients: expected an integer, got string "x"`,
			},
		},
		{
			name: "every problem, in file order",
			data: doc(
				`hostname = 1`,
				`[store]`,
				`mail_rot = "/x"`,
				`tmp_max_age = "1y"`,
				`[foo]`,
				`[pop3]`,
				`listen = [1]`,
			),
			want: []string{
				`x.toml:1: key hostname:`,
				`x.toml:3: unknown key "store.mail_rot"`,
				`x.toml:4: key store.tmp_max_age: invalid duration "1y"`,
				`x.toml:5: unknown section "foo"`,
				`x.toml:7: key pop3.listen: element 1:`,
			},
		},
		{
			name: "syntax error",
			data: doc("[store]", `mail_root = "/x`),
			want: []string{`x.toml:2:16: invalid TOML: strings cannot contain newlines`},
		},
		{
			name: "syntax error: missing value",
			data: doc("", "", "hostname = "),
			want: []string{`x.toml:3:12: invalid TOML: expected value`},
		},
		{
			name: "duplicate key",
			data: doc("[store]", `mail_root = "/x"`, `mail_root = "/y"`),
			want: []string{`x.toml:3:`, `has already been defined`},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.data, "x.toml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if tt.name == "duplicate key" { // one error, two checks
				wantErrors(t, err, tt.want[0])
				wantErrors(t, err, tt.want[1])
				return
			}
			wantErrors(t, err, tt.want...)
		})
	}
}

func TestErrorType(t *testing.T) {
	_, err := Parse(doc("", "[store]", `mail_rot = "/x"`), "nfsdrop.toml")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%v is not an *Error", err)
	}
	if e.File != "nfsdrop.toml" || e.Line != 3 || e.Key != "store.mail_rot" || e.Default {
		t.Errorf("got %+v", *e)
	}

	_, err = Parse(doc("[store]", `mail_root = "/x`), "nfsdrop.toml")
	if !errors.As(err, &e) || e.Line != 2 || e.Col == 0 {
		t.Errorf("syntax error: got %#v", err)
	}
}

func TestEmptyFileIsDefault(t *testing.T) {
	c, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !equalConfig(*c, Default()) {
		t.Errorf("empty file: got %+v; want Default()", *c)
	}
}

func TestValuesDecoded(t *testing.T) {
	c, err := Parse(doc(
		`hostname = "mx1.example.org"`,
		`[store]`,
		`mail_root = "/srv/mail"`,
		`tmp_max_age = "48h"`,
		`[userdb]`,
		`quota_storage = 1048576`,
		`quota_messages = 5000`,
		`[lmtp]`,
		`listen = ["tcp:127.0.0.1:24", "unix:/run/a"]`,
		`max_message_size = "100M"`,
		`[pop3]`,
		`stls = true`,
		`tls_cert = "/c.pem"`,
		`tls_key = "/k.pem"`,
	), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Hostname = "mx1.example.org"
	want.Store.MailRoot = "/srv/mail"
	want.Store.TmpMaxAge = Duration(48 * 3600e9)
	want.UserDB.QuotaStorage = MiB
	want.UserDB.QuotaMessages = 5000
	want.LMTP.Listen = []string{"tcp:127.0.0.1:24", "unix:/run/a"}
	want.LMTP.MaxMessageSize = 100 * MiB
	want.POP3.STLS = true
	want.POP3.TLSCert = "/c.pem"
	want.POP3.TLSKey = "/k.pem"
	if !equalConfig(*c, want) {
		t.Errorf("got  %+v\nwant %+v", *c, want)
	}
}

func TestLoadPasswdFileRelative(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		setting string
		want    string
	}{
		{`passwd_file = "users"`, filepath.Join(dir, "users")},
		{`passwd_file = "sub/../users"`, filepath.Join(dir, "users")},
		{`passwd_file = "/etc/nfsdrop/other"`, "/etc/nfsdrop/other"},
		{``, "/etc/nfsdrop/users"},
	} {
		path := filepath.Join(dir, "nfsdrop.toml")
		if err := os.WriteFile(path, doc("[userdb]", tt.setting), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if c.UserDB.PasswdFile != tt.want {
			t.Errorf("%s: passwd_file = %q; want %q", tt.setting, c.UserDB.PasswdFile, tt.want)
		}
	}

	// A relative config path resolves against the config's directory too.
	t.Chdir(dir)
	if err := os.Mkdir("etc", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("etc/nfsdrop.toml", doc("[userdb]", `passwd_file = "users"`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load("etc/nfsdrop.toml")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "etc", "users"); c.UserDB.PasswdFile != want {
		t.Errorf("passwd_file = %q; want %q", c.UserDB.PasswdFile, want)
	}

	// Parse has no directory: the path stays as written.
	c, err = Parse(doc("[userdb]", `passwd_file = "users"`), "nfsdrop.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.UserDB.PasswdFile != "users" {
		t.Errorf("Parse: passwd_file = %q; want %q", c.UserDB.PasswdFile, "users")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v; want ErrNotExist", err)
	}
	path := filepath.Join(dir, "nfsdrop.toml")
	if err := os.WriteFile(path, doc("[store]", `mail_root = "relative"`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	wantErrors(t, err, path+`:2: key store.mail_root: "relative" must be an absolute path`)
}

// equalConfig compares the values of two configurations, not where they were
// read from.
func equalConfig(a, b Config) bool {
	a.src, b.src = nil, nil
	return reflect.DeepEqual(a, b)
}
