package userdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// fixture is a passwd-file and a mail root in a temporary directory.
type fixture struct {
	dir  string // holds the file and the root
	root string // the mail root (exists)
	path string // the passwd-file
	log  *testkit.LogBuffer
	opts PasswdFileOptions
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, root: filepath.Join(dir, "mail"), path: filepath.Join(dir, "users"), log: &testkit.LogBuffer{}}
	if err := os.Mkdir(f.root, 0o755); err != nil {
		t.Fatal(err)
	}
	f.opts = PasswdFileOptions{
		Path:        f.path,
		MailRoot:    f.root,
		MaildirName: "Maildir",
		Logger:      slog.New(slog.NewTextHandler(f.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return f
}

// write replaces the file the way editors and config tools do: a new
// inode renamed over the old one.
func (f *fixture) write(t *testing.T, content string) {
	t.Helper()
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) open(t *testing.T, content string) *PasswdFile {
	t.Helper()
	f.write(t, content)
	p, err := OpenPasswdFile(f.opts)
	if err != nil {
		t.Fatalf("OpenPasswdFile: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// lines joins passwd-file lines, substituting ROOT with the mail root.
func (f *fixture) lines(ls ...string) string {
	return strings.ReplaceAll(strings.Join(ls, "\n")+"\n", "ROOT", f.root)
}

func wantKind(t *testing.T, err error, kind failure.Kind, reason string) {
	t.Helper()
	var fe *failure.Error
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *failure.Error", err)
	}
	if fe.Kind != kind {
		t.Fatalf("error %v has kind %v, want %v", err, fe.Kind, kind)
	}
	if reason != "" && fe.Reason != reason {
		t.Fatalf("error %v has reason %q, want %q", err, fe.Reason, reason)
	}
}

func mustLookup(t *testing.T, p *PasswdFile, addr string) *User {
	t.Helper()
	u, err := p.Lookup(context.Background(), addr)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", addr, err)
	}
	return u
}

func TestPasswdFileMalformedLines(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		problem string // the whole problem text after "file:2: "
	}{
		{"one field", "bob", "line has no password field"},
		{"empty user", ":{PLAIN}x:1:1", "empty user name"},
		{"uid not a number", "bob:{PLAIN}x:x", `uid field "x" is not a number`},
		{"negative uid", "bob:{PLAIN}x:-5", `uid field "-5" is not a number`},
		{"uid -1 as number", "bob:{PLAIN}x:4294967295", `uid field "4294967295" is not a number`},
		{"gid not a number", "bob:{PLAIN}x:1000:abc", `gid field "abc" is not a number`},
		{"shifted password not shown", "bob::{PLAIN}hunter2:1000", `uid field (value not shown) is not a number`},
		{"user with space", "bob smith:{PLAIN}x", "user name refused: address contains a control character or space"},
		{"user with two ats", "a@b@c:{PLAIN}x", "user name refused: more than one '@'"},
		{"user dotdot", "..:{PLAIN}x", "user name refused: local part could be mistaken for a path element"},
		{"user with slash", "a/b:{PLAIN}x", "user name refused: local part contains a character that is not allowed"},
		{"extra field without name", "bob:{PLAIN}x::::::=foo", "extra field with an empty name"},
		{"relative quota plus", "bob:{PLAIN}x::::::userdb_quota_rule=*:storage=+10M", "extra field userdb_quota_rule: relative quota limits (+, -, %) are not supported"},
		{"relative quota percent", "bob:{PLAIN}x::::::quota_rule=*:storage=10%", "extra field quota_rule: relative quota limits (+, -, %) are not supported"},
		{"relative quota minus", "bob:{PLAIN}x::::::quota_rule2=*:messages=-5", "extra field quota_rule2: relative quota limits (+, -, %) are not supported"},
		{"quota bad unit", "bob:{PLAIN}x::::::quota_rule=*:storage=10X", `extra field quota_rule: quota limit storage value "10X" is not a size`},
		{"quota messages with unit", "bob:{PLAIN}x::::::quota_rule=*:messages=10k", `extra field quota_rule: quota limit messages value "10k" is not a size`},
		{"quota overflow", "bob:{PLAIN}x::::::quota_rule=*:storage=99999999999T", `extra field quota_rule: quota limit storage value "99999999999T" is not a size`},
		{"quota unknown limit", "bob:{PLAIN}x::::::quota_rule=*:files=1", `extra field quota_rule: unknown quota limit "files"`},
		{"quota without mailbox", "bob:{PLAIN}x::::::quota_rule=storage", "extra field quota_rule: quota rule is not MAILBOX:LIMIT=VALUE"},
		{"disabled maybe", "bob:{PLAIN}x::::::userdb_disabled=maybe", `extra field userdb_disabled: value "maybe" is not yes or no`},
		{"mail not maildir", "bob:{PLAIN}x::::::userdb_mail=mbox:~/mail", "extra field userdb_mail: mail location is not maildir:PATH"},
		{"mail without format", "bob:{PLAIN}x::::::userdb_mail=/var/mail/bob", "extra field userdb_mail: mail location is not maildir:PATH"},
		{"mail variables", "bob:{PLAIN}x::::::userdb_mail=maildir:ROOT/%d/%n", "extra field userdb_mail: mail location uses %-variables, which are not supported"},
		{"mail empty path", "bob:{PLAIN}x::::::mail=maildir::LAYOUT=fs", "extra field mail: mail location has no path"},
		{"uid override bad", "bob:{PLAIN}x::::::userdb_uid=abc", `extra field userdb_uid value "abc" is not a number`},
		{"gid override empty", "bob:{PLAIN}x::::::gid=", `extra field gid value "" is not a number`},
		{"duplicate", "alice:{PLAIN}y:2", `duplicate user "alice" (first on line 1)`},
		{"duplicate by case", "ALICE:{PLAIN}y:2", `duplicate user "alice" (first on line 1)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			p := f.open(t, f.lines("alice:{PLAIN}secret:1:1", tt.line, "# a comment", "", "carol:{PLAIN}pw3"))
			probs := p.Problems()
			want := f.path + ":2: " + strings.ReplaceAll(tt.problem, "ROOT", f.root)
			if len(probs) != 1 || probs[0].Error() != want {
				t.Fatalf("Problems() = %v, want [%s]", probs, want)
			}
			if p.Users() != 2 {
				t.Fatalf("Users() = %d, want 2", p.Users())
			}
			// The good users on either side still work, and the first
			// of a duplicate pair is the one kept.
			if u := mustLookup(t, p, "alice"); u.UID != 1 {
				t.Fatalf("alice has uid %d, want 1 (the first line)", u.UID)
			}
			mustLookup(t, p, "carol")
			if _, err := p.Lookup(context.Background(), "bob"); err == nil {
				t.Fatal("the malformed bob line was used")
			}
			logs := f.log.String()
			if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "line=2") || !strings.Contains(logs, "file="+f.path) {
				t.Fatalf("no warning naming file and line in log:\n%s", logs)
			}
			for _, secret := range []string{"secret", "hunter2", "{PLAIN}"} {
				if strings.Contains(logs, secret) {
					t.Fatalf("log contains %q:\n%s", secret, logs)
				}
			}
		})
	}
}

func TestPasswdFileIgnoredLines(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "# comment\n\n   \n  # indented comment\r\nalice:{PLAIN}x\r\nbob:{PLAIN}y") // CRLF, no final newline
	if p.Users() != 2 || len(p.Problems()) != 0 {
		t.Fatalf("Users() = %d, Problems() = %v", p.Users(), p.Problems())
	}
	if _, err := p.Authenticate(context.Background(), "alice", "x"); err != nil {
		t.Fatalf("CR was not stripped from the password: %v", err)
	}
	mustLookup(t, p, "bob")
}

func TestPasswdFileFields(t *testing.T) {
	f := newFixture(t)
	f.opts.DefaultQuota = Quota{Bytes: 100, Messages: 7}
	p := f.open(t, f.lines(
		"u1:{PLAIN}p:1000:1001:Gecos Field:::",
		"u2:{PLAIN}p",
		"u3:{PLAIN}p:::::: userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=1000",
		"u4:{PLAIN}p::::::quota_rule=*:storage=1024",
		"u5:{PLAIN}p::::::quota_rule=*:bytes=5000",
		"u6:{PLAIN}p::::::quota_rule=*:storage=512b",
		"u7:{PLAIN}p::::::quota_rule=Trash:storage=100M",
		"u8:{PLAIN}p::::::quota_rule=*:storage=2T:messages=10",
		"u9:{PLAIN}p::::::quota_rule=*:storage=0",
		"u10:{PLAIN}p:1:1::::userdb_uid=2000 userdb_gid=3000",
		"u11:{PLAIN}p::::::disabled=no",
		"u12:{PLAIN}p::::::foo=bar nopassword allow_nets=192.0.2.0/24 userdb_whatever=1",
		"u13:{PLAIN}p::::::quota_rule=?:messages=5 quota_rule=*:bytes=10K",
		"u14:{PLAIN}p:0:0",
	))
	if len(p.Problems()) != 0 {
		t.Fatalf("Problems: %v", p.Problems())
	}
	tests := []struct {
		user     string
		uid, gid int
		quota    Quota
	}{
		{"u1", 1000, 1001, Quota{100, 7}},
		{"u2", -1, -1, Quota{100, 7}},
		{"u3", -1, -1, Quota{1 << 30, 1000}},
		{"u4", -1, -1, Quota{1 << 20, 7}}, // Dovecot: storage= without unit is kilobytes
		{"u5", -1, -1, Quota{5000, 7}},
		{"u6", -1, -1, Quota{512, 7}},
		{"u7", -1, -1, Quota{100, 7}}, // a folder rule does not touch the mailbox quota
		{"u8", -1, -1, Quota{2 << 40, 10}},
		{"u9", -1, -1, Quota{0, 7}},
		{"u10", 2000, 3000, Quota{100, 7}},
		{"u11", -1, -1, Quota{100, 7}},
		{"u12", -1, -1, Quota{100, 7}},
		{"u13", -1, -1, Quota{10 << 10, 5}},
		{"u14", 0, 0, Quota{100, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			u := mustLookup(t, p, tt.user)
			if u.UID != tt.uid || u.GID != tt.gid || u.Quota != tt.quota || !u.Enabled || u.Name != tt.user {
				t.Fatalf("got %+v, want uid %d gid %d quota %+v", u, tt.uid, tt.gid, tt.quota)
			}
		})
	}
}

func TestPasswdFileMatching(t *testing.T) {
	file := []string{
		"alice:{PLAIN}a:1",
		"bob@example.com:{PLAIN}b:2",
		"carol:{PLAIN}c:3",
		"carol@other.org:{PLAIN}c:4",
		"mary:{PLAIN}m:5",
		"mary-ann:{PLAIN}m:6",
		"Dave@Example.COM.:{PLAIN}d:7",
	}
	type lookup struct {
		addr    string
		uid     int    // 0: expect NotFound
		address string // User.Address
		name    string // User.Name
	}
	tests := []struct {
		name string
		n    Normalizer
		look []lookup
	}{
		{"no default domain", Normalizer{Delimiters: "+-"}, []lookup{
			{"alice", 1, "alice", "alice"},
			{"alice@anything.org", 1, "alice@anything.org", "alice"},
			{"<Alice+news@Example.COM>", 1, "alice@example.com", "alice"},
			{"bob@example.com", 2, "bob@example.com", "bob@example.com"},
			{"BOB+x@EXAMPLE.COM", 2, "bob@example.com", "bob@example.com"},
			{"bob", 0, "", ""},
			{"bob@other.org", 0, "", ""},
			{"carol@other.org", 4, "carol@other.org", "carol@other.org"}, // exact wins
			{"carol@x.org", 3, "carol@x.org", "carol"},
			{"carol", 3, "carol", "carol"},
			{"mary-ann@x.org", 6, "mary-ann@x.org", "mary-ann"}, // unsplit name tried first
			{"mary-jane@x.org", 5, "mary@x.org", "mary"},
			{"mary+ann@x.org", 5, "mary@x.org", "mary"},
			{"dave@example.com", 7, "dave@example.com", "dave@example.com"},
			{"nobody@example.com", 0, "", ""},
		}},
		{"default domain", Normalizer{Delimiters: "+", DefaultDomain: "example.com"}, []lookup{
			{"alice", 1, "alice@example.com", "alice"},
			{"alice@example.com", 1, "alice@example.com", "alice"},
			{"alice@other.org", 0, "", ""},
			{"bob", 2, "bob@example.com", "bob@example.com"},
			{"bob+x", 2, "bob@example.com", "bob@example.com"},
			{"carol@other.org", 4, "carol@other.org", "carol@other.org"},
			{"carol", 3, "carol@example.com", "carol"},
			{"carol@x.org", 0, "", ""},
		}},
		{"no delimiter", Normalizer{}, []lookup{
			{"alice+x@example.com", 0, "", ""},
			{"mary-ann", 6, "mary-ann", "mary-ann"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.opts.Normalizer = tt.n
			p := f.open(t, f.lines(file...))
			for _, l := range tt.look {
				u, err := p.Lookup(context.Background(), l.addr)
				if l.uid == 0 {
					if u != nil {
						t.Errorf("Lookup(%q) = %+v, want NotFound", l.addr, u)
						continue
					}
					wantKind(t, err, failure.NotFound, "no such user")
					continue
				}
				if err != nil {
					t.Errorf("Lookup(%q): %v", l.addr, err)
					continue
				}
				if u.UID != l.uid || u.Address != l.address || u.Name != l.name {
					t.Errorf("Lookup(%q) = uid %d address %q name %q; want %d %q %q", l.addr, u.UID, u.Address, u.Name, l.uid, l.address, l.name)
				}
			}
		})
	}
}

func TestPasswdFileLookupBadInput(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "alice:{PLAIN}x\n")
	for _, addr := range []string{"", "a b", "../x", "a@b@c", "\x00"} {
		_, err := p.Lookup(context.Background(), addr)
		wantKind(t, err, failure.BadInput, "")
	}
}

func TestPasswdFileMailbox(t *testing.T) {
	tests := []struct {
		name    string
		n       Normalizer
		maildir string // MaildirName; "-" for ""
		line    string
		addr    string
		want    string // relative to the root
	}{
		{"exact, no home", Normalizer{}, "Maildir", "alice@example.com:{PLAIN}x", "alice@example.com", "example.com/alice/Maildir"},
		{"bare, no home, no default domain", Normalizer{}, "Maildir", "bob:{PLAIN}x", "bob@x.org", "bob/Maildir"},
		{"bare, no home, default domain", Normalizer{DefaultDomain: "Example.com"}, "Maildir", "bob:{PLAIN}x", "bob", "example.com/bob/Maildir"},
		{"bare, no home, default domain, other spelling", Normalizer{DefaultDomain: "example.com"}, "Maildir", "Bob:{PLAIN}x", "BOB@EXAMPLE.COM", "example.com/bob/Maildir"},
		{"absolute home", Normalizer{}, "Maildir", "carol:{PLAIN}x:1:1::ROOT/homes/carol", "carol", "homes/carol/Maildir"},
		{"relative home", Normalizer{}, "Maildir", "carol:{PLAIN}x:1:1::users/carol", "carol", "users/carol/Maildir"},
		{"untidy home", Normalizer{}, "Maildir", "carol:{PLAIN}x:1:1::ROOT//users/./carol/", "carol", "users/carol/Maildir"},
		{"no maildir name", Normalizer{}, "-", "carol:{PLAIN}x:1:1::ROOT/homes/carol", "carol", "homes/carol"},
		{"no maildir name, no home", Normalizer{}, "-", "carol@example.com:{PLAIN}x", "carol@example.com", "example.com/carol"},
		{"nested maildir name", Normalizer{}, "mail/Maildir", "carol:{PLAIN}x:1:1::h/carol", "carol", "h/carol/mail/Maildir"},
		{"mail override ~/", Normalizer{}, "Maildir", "dan:{PLAIN}x:1:1::ROOT/h/dan::userdb_mail=maildir:~/Mail:LAYOUT=fs", "dan", "h/dan/Mail"},
		{"mail override ~", Normalizer{}, "Maildir", "dan:{PLAIN}x:1:1::ROOT/h/dan::mail=maildir:~", "dan", "h/dan"},
		{"mail override ~ without home", Normalizer{}, "Maildir", "dan@d.org:{PLAIN}x::::::mail=maildir:~/Mail", "dan@d.org", "d.org/dan/Mail"},
		{"mail override absolute", Normalizer{}, "Maildir", "dan:{PLAIN}x:1:1::ROOT/h/dan::userdb_mail=maildir:ROOT/elsewhere/dan:INDEX=/var/idx", "dan", "elsewhere/dan"},
		{"mail override relative", Normalizer{}, "Maildir", "dan:{PLAIN}x::::::userdb_mail=MAILDIR:x/y", "dan", "x/y"},
		{"ip literal domain", Normalizer{}, "Maildir", "eve@[192.0.2.1]:{PLAIN}x", "eve@[192.0.2.1]", "[192.0.2.1]/eve/Maildir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.opts.Normalizer = tt.n
			f.opts.MaildirName = tt.maildir
			if tt.maildir == "-" {
				f.opts.MaildirName = ""
			}
			p := f.open(t, f.lines(tt.line))
			if len(p.Problems()) != 0 {
				t.Fatalf("Problems: %v", p.Problems())
			}
			u := mustLookup(t, p, tt.addr)
			if want := filepath.Join(f.root, tt.want); u.Mailbox != want {
				t.Fatalf("Mailbox = %q, want %q", u.Mailbox, want)
			}
		})
	}
}

func TestPasswdFileConfinement(t *testing.T) {
	type setup func(t *testing.T, f *fixture)
	symlink := func(target, name string) setup {
		return func(t *testing.T, f *fixture) {
			t.Helper()
			target := strings.ReplaceAll(strings.ReplaceAll(target, "ROOT", f.root), "DIR", f.dir)
			name := strings.ReplaceAll(name, "ROOT", f.root)
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	mkdir := func(name string) setup {
		return func(t *testing.T, f *fixture) {
			t.Helper()
			if err := os.MkdirAll(strings.ReplaceAll(strings.ReplaceAll(name, "ROOT", f.root), "DIR", f.dir), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		maildir string
		setup   []setup
		line    string // DIR is the directory above the root
		kind    failure.Kind
		ok      bool
	}{
		{name: "absolute home /etc", line: "x:{PLAIN}p:1:1::/etc", kind: failure.Permanent},
		{name: "home dotdot out of the root", line: "x:{PLAIN}p:1:1::ROOT/../outside", kind: failure.Permanent},
		{name: "relative home dotdot", line: "x:{PLAIN}p:1:1::x/../../etc", kind: failure.Permanent},
		{name: "dotdot that stays inside is still refused", line: "x:{PLAIN}p:1:1::ROOT/a/../b", kind: failure.Permanent},
		{name: "home is the root itself", maildir: "-", line: "x:{PLAIN}p:1:1::ROOT", kind: failure.Permanent},
		{name: "root prefix trick", line: "x:{PLAIN}p:1:1::ROOTevil", kind: failure.Permanent},
		{name: "mail override dotdot", line: "x:{PLAIN}p:1:1::ROOT/h/x::userdb_mail=maildir:~/../../../etc", kind: failure.Permanent},
		{name: "mail override absolute outside", line: "x:{PLAIN}p:1:1::ROOT/h/x::userdb_mail=maildir:/etc/Maildir", kind: failure.Permanent},
		{name: "mail override slash", line: "x:{PLAIN}p:1:1::ROOT/h/x::userdb_mail=maildir:/", kind: failure.Permanent},
		{name: "mail override relative dotdot", line: "x:{PLAIN}p::::::userdb_mail=maildir:../x", kind: failure.Permanent},
		{name: "symlinked home pointing outside", setup: []setup{mkdir("DIR/outside"), symlink("DIR/outside", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", kind: failure.Permanent},
		{name: "symlinked domain directory pointing outside", setup: []setup{mkdir("DIR/outside"), symlink("DIR/outside", "ROOT/example.com")},
			line: "x@example.com:{PLAIN}p", kind: failure.Permanent},
		{name: "relative symlink pointing outside", setup: []setup{mkdir("DIR/outside/Maildir"), symlink("../../outside", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::h/x", kind: failure.Permanent},
		{name: "symlinked maildir pointing outside", setup: []setup{mkdir("DIR/outside"), symlink("DIR/outside", "ROOT/h/x/Maildir")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", kind: failure.Permanent},
		{name: "symlink to the root itself", maildir: "-", setup: []setup{symlink("ROOT", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", kind: failure.Permanent},
		{name: "symlink to /", setup: []setup{symlink("/", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", kind: failure.Permanent},
		{name: "dangling symlink is a storage problem", setup: []setup{symlink("DIR/not-mounted/x", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", kind: failure.Temporary},
		{name: "symlink loop is a storage problem", setup: []setup{symlink("ROOT/h/b", "ROOT/h/a"), symlink("ROOT/h/a", "ROOT/h/b")},
			line: "x:{PLAIN}p:1:1::ROOT/h/a", kind: failure.Temporary},
		// Allowed cases.
		{name: "symlink within the root", setup: []setup{mkdir("ROOT/real/x"), symlink("ROOT/real/x", "ROOT/h/x")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", ok: true},
		{name: "relative symlink within the root", setup: []setup{mkdir("ROOT/real/x"), symlink("real", "ROOT/h")},
			line: "x:{PLAIN}p:1:1::ROOT/h/x", ok: true},
		{name: "existing maildir", setup: []setup{mkdir("ROOT/h/x/Maildir/new")}, line: "x:{PLAIN}p:1:1::ROOT/h/x", ok: true},
		{name: "ancestor is a file", setup: []setup{mkdir("ROOT/h"), func(t *testing.T, f *fixture) {
			if err := os.WriteFile(filepath.Join(f.root, "h", "x"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}}, line: "x:{PLAIN}p:1:1::ROOT/h/x", ok: true}, // delivery will fail; the path is not an escape
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.maildir == "-" {
				f.opts.MaildirName = ""
			}
			for _, s := range tt.setup {
				s(t, f)
			}
			line := strings.ReplaceAll(tt.line, "DIR", f.dir)
			p := f.open(t, f.lines(line))
			if len(p.Problems()) != 0 {
				t.Fatalf("Problems: %v", p.Problems())
			}
			addr := "x"
			if strings.HasPrefix(line, "x@") {
				addr = "x@example.com"
			}
			u, err := p.Lookup(context.Background(), addr)
			if tt.ok {
				if err != nil {
					t.Fatalf("Lookup: %v", err)
				}
				if !strings.HasPrefix(u.Mailbox, f.root+"/") {
					t.Fatalf("Mailbox %q not under the root", u.Mailbox)
				}
				return
			}
			if u != nil {
				t.Fatalf("Lookup returned %+v, want an error", u)
			}
			if tt.kind == failure.Permanent {
				wantKind(t, err, failure.Permanent, "mailbox path outside the mail root")
				logs := f.log.String()
				if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "user=x") || !strings.Contains(logs, "path=") {
					t.Fatalf("no error log naming user and path:\n%s", logs)
				}
			} else {
				wantKind(t, err, tt.kind, "")
			}
			// The peer sees the Reason; it must not reveal paths. A
			// refusal carries no cause either, so even the full text is
			// clean (a Temporary one keeps its cause for errors.Is).
			if r := failure.As(err).Reason; strings.Contains(r, "/") {
				t.Fatalf("reason %q reveals a path", r)
			}
			if tt.kind == failure.Permanent && (strings.Contains(err.Error(), f.dir) || strings.Contains(err.Error(), "/etc")) {
				t.Fatalf("error %q reveals a path", err)
			}
			// Authenticate resolves the mailbox too.
			if _, err := p.Authenticate(context.Background(), addr, "p"); failure.KindOf(err) != tt.kind {
				t.Fatalf("Authenticate: %v, want kind %v", err, tt.kind)
			}
		})
	}
}

// A symlink that changes after the file was loaded is caught: the check
// runs at every lookup.
func TestPasswdFileSymlinkChangedAfterLoad(t *testing.T) {
	f := newFixture(t)
	inside := filepath.Join(f.root, "real", "x")
	outside := filepath.Join(f.dir, "outside")
	link := filepath.Join(f.root, "h", "x")
	for _, d := range []string{inside, outside, filepath.Dir(link)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(inside, link); err != nil {
		t.Fatal(err)
	}
	p := f.open(t, f.lines("x:{PLAIN}p:1:1::ROOT/h/x"))
	mustLookup(t, p, "x")
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	_, err := p.Lookup(context.Background(), "x")
	wantKind(t, err, failure.Permanent, "mailbox path outside the mail root")
}

func TestPasswdFileSymlinkedMailRoot(t *testing.T) {
	f := newFixture(t)
	// The configured root is a symlink to the real one (a common NFS
	// automount layout); mailboxes below it are fine.
	f.opts.MailRoot = filepath.Join(f.dir, "mail-link")
	if err := os.Symlink(f.root, f.opts.MailRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(f.root, "example.com", "a", "Maildir"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := f.open(t, "a@example.com:{PLAIN}x\nb@example.com:{PLAIN}x\n")
	for _, addr := range []string{"a@example.com", "b@example.com"} {
		u := mustLookup(t, p, addr)
		if !strings.HasPrefix(u.Mailbox, f.opts.MailRoot+"/") {
			t.Fatalf("Mailbox %q not under the configured root", u.Mailbox)
		}
	}
}

func TestPasswdFileMailRootMissing(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "a@example.com:{PLAIN}x\n")
	// The NFS mount went away: retry, do not bounce.
	if err := os.Remove(f.root); err != nil {
		t.Fatal(err)
	}
	_, err := p.Lookup(context.Background(), "a@example.com")
	wantKind(t, err, failure.Temporary, "mail storage unavailable")
}

func TestPasswdFileDisabled(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, f.lines(
		"d1:{PLAIN}pw::::::userdb_disabled=yes",
		"d2:{PLAIN}pw::::::disabled=true",
		"d3:{PLAIN}pw::::::disabled=Y",
		"d4:{PLAIN}pw::::::disabled",
		"nl:{PLAIN}pw::::::nologin",
	))
	for _, name := range []string{"d1", "d2", "d3", "d4"} {
		u, err := p.Lookup(context.Background(), name)
		if u != nil {
			t.Fatalf("Lookup(%s) returned a user", name)
		}
		wantKind(t, err, failure.Disabled, "account disabled")
		// Only someone with the password learns the account is disabled.
		_, err = p.Authenticate(context.Background(), name, "pw")
		wantKind(t, err, failure.Disabled, "account disabled")
		_, err = p.Authenticate(context.Background(), name, "wrong")
		wantKind(t, err, failure.NotFound, "authentication failed")
	}
	// nologin stops logins, not mail.
	if u := mustLookup(t, p, "nl"); !u.Enabled {
		t.Fatal("nologin user not enabled for delivery")
	}
	_, err := p.Authenticate(context.Background(), "nl", "pw")
	wantKind(t, err, failure.Disabled, "login disabled")
}

func TestPasswdFileAuthenticate(t *testing.T) {
	hash := func(scheme, pw string) string {
		h, err := HashPassword(scheme, pw)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	f := newFixture(t)
	f.opts.Normalizer = Normalizer{Delimiters: "+", DefaultDomain: "example.com"}
	secrets := map[string]string{
		"sha512":  hash("SHA512-CRYPT", "pw-sha512"),
		"sha256":  "{SHA256-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",
		"md5":     "$1$saltsalt$9xy1btjgzLYfb7hivXtC//",
		"blf":     hash("BLF-CRYPT", "pw-blf"),
		"argon":   hash("ARGON2ID", "pw-argon"),
		"ssha":    hash("SSHA", "pw-ssha"),
		"sha":     "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",
		"plain":   "{PLAIN}pw-plain",
		"broken":  "{SHA512-CRYPT}garbage-hash-value",
		"unknown": "{ROT13}cj-ebg",
		"empty":   "",
	}
	var file []string
	for user, h := range secrets {
		file = append(file, user+":"+h+":1000:1000")
	}
	p := f.open(t, f.lines(file...))
	tests := []struct {
		name, password string
		ok             bool
	}{
		{"sha512", "pw-sha512", true},
		{"sha256", "secret", true},
		{"md5", "secret", true},
		{"blf", "pw-blf", true},
		{"argon", "pw-argon", true},
		{"ssha", "pw-ssha", true},
		{"sha", "secret", true},
		{"plain", "pw-plain", true},
		{"Plain+tag@Example.COM", "pw-plain", true},
		{"sha512", "pw-sha513", false},
		{"sha256", "Secret", false},
		{"md5", "", false},
		{"blf", "pw-blF", false},
		{"argon", "pw-argo", false},
		{"ssha", "pw-ssha ", false},
		{"sha", "secrets", false},
		{"plain", "pw-plai", false},
		{"plain", "", false},
		{"plain@other.org", "pw-plain", false}, // a different user
		{"broken", "anything", false},
		{"unknown", "pw-rot", false},
		{"empty", "", false},
		{"empty", "x", false},
		{"nobody", "pw-plain", false},
		{"nobody", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.password, func(t *testing.T) {
			u, err := p.Authenticate(context.Background(), tt.name, tt.password)
			if tt.ok {
				if err != nil {
					t.Fatalf("Authenticate: %v", err)
				}
				if u.UID != 1000 || !u.Enabled || u.Mailbox == "" {
					t.Fatalf("user %+v", u)
				}
				return
			}
			if u != nil {
				t.Fatalf("Authenticate returned %+v", u)
			}
			// Unknown user and wrong password look the same.
			wantKind(t, err, failure.NotFound, "authentication failed")
		})
	}
	logs := f.log.String()
	if !strings.Contains(logs, "user=broken") || !strings.Contains(logs, "user=unknown") {
		t.Fatalf("unusable hashes not logged:\n%s", logs)
	}
	for _, s := range append([]string{"pw-", "secret", "garbage-hash-value", "cj-ebg", "saltsalt"}, secrets["blf"], secrets["sha512"]) {
		if s != "" && strings.Contains(logs, s) {
			t.Fatalf("log contains %q:\n%s", s, logs)
		}
	}
}

func TestPasswdFileAuthenticateBadName(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "a:{PLAIN}x\n")
	_, err := p.Authenticate(context.Background(), "a b", "x")
	wantKind(t, err, failure.BadInput, "")
}

// waitFor polls cond until it holds, for reload tests: the reload happens
// on a lookup after the check interval, so there is nothing to wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, cond, func() string { return "timed out waiting for " + what })
}

func found(p *PasswdFile, addr string) bool {
	_, err := p.Lookup(context.Background(), addr)
	return err == nil
}

func TestPasswdFileReload(t *testing.T) {
	f := newFixture(t)
	f.opts.ReloadCheckInterval = 10 * time.Millisecond
	p := f.open(t, "alice:{PLAIN}a\nbob:{PLAIN}b\n")

	// Rewrite by rename (new inode).
	f.write(t, "alice:{PLAIN}a\ncarol:{PLAIN}c\nbad:{PLAIN}x:x\n")
	waitFor(t, "carol after rename", func() bool { return found(p, "carol") })
	if found(p, "bob") {
		t.Fatal("bob still there after the reload")
	}
	if probs := p.Problems(); len(probs) != 1 || !strings.HasPrefix(probs[0].Error(), f.path+":3: ") {
		t.Fatalf("Problems after reload = %v", probs)
	}

	// Rewrite in place (same inode, new size).
	if err := os.WriteFile(f.path, []byte("alice:{PLAIN}a\ndave:{PLAIN}d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dave after in-place write", func() bool { return found(p, "dave") })
	if len(p.Problems()) != 0 {
		t.Fatalf("Problems = %v", p.Problems())
	}

	// Same inode, same size: only the mtime tells.
	if err := os.WriteFile(f.path, []byte("alice:{PLAIN}a\nerin:{PLAIN}d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(f.path, future, future); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "erin after same-size write", func() bool { return found(p, "erin") })

	// The file vanishes: keep serving the old table, log once. The log
	// line shows a reload was tried (lookups trigger it), so "users lost"
	// is checked against a failed reload, not after a fixed sleep.
	if err := os.Remove(f.path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed reload logged", func() bool {
		if !found(p, "erin") {
			t.Fatal("users lost when the file vanished")
		}
		return strings.Contains(f.log.String(), "reload failed")
	})
	for range 5 {
		if !found(p, "erin") {
			t.Fatal("users lost when the file vanished")
		}
		time.Sleep(15 * time.Millisecond)
	}
	if n := strings.Count(f.log.String(), "reload failed"); n != 1 {
		t.Fatalf("reload failure logged %d times, want once:\n%s", n, f.log.String())
	}
	if p.Users() != 2 {
		t.Fatalf("Users() = %d", p.Users())
	}

	// Unreadable (a directory in its place): still the old table.
	if err := os.Mkdir(f.path, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if !found(p, "erin") {
		t.Fatal("users lost when the file became unreadable")
	}
	if err := os.Remove(f.path); err != nil {
		t.Fatal(err)
	}

	// And it comes back.
	f.write(t, "frank:{PLAIN}f\n")
	waitFor(t, "frank after the file came back", func() bool { return found(p, "frank") })
	if found(p, "erin") {
		t.Fatal("erin survived the reload")
	}
	if !strings.Contains(f.log.String(), "readable again") {
		t.Fatalf("recovery not logged:\n%s", f.log.String())
	}
}

func TestPasswdFileReloadRateLimited(t *testing.T) {
	f := newFixture(t)
	f.opts.ReloadCheckInterval = time.Hour
	p := f.open(t, "alice:{PLAIN}a\n")
	f.write(t, "bob:{PLAIN}b\n")
	for range 10 {
		if found(p, "bob") {
			t.Fatal("file re-read before the check interval passed")
		}
	}
}

func TestPasswdFileConcurrentLookupsDuringReload(t *testing.T) {
	f := newFixture(t)
	f.opts.ReloadCheckInterval = time.Millisecond
	version := func(i int) string {
		var b strings.Builder
		b.WriteString("stable:{PLAIN}pw:1:1\n")
		for j := range 50 {
			fmt.Fprintf(&b, "user%d-%d:{PLAIN}pw\n", i%3, j)
		}
		return b.String()
	}
	p := f.open(t, version(0))

	stop := make(chan struct{})
	var writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// t.Fatal must not be called from here; WriteFile errors
			// would show up as lookups failing.
			tmp := fmt.Sprintf("%s.%d", f.path, i)
			if os.WriteFile(tmp, []byte(version(i)), 0o600) == nil && os.Rename(tmp, f.path) == nil {
				writes.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var failures atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				var err error
				if g%2 == 0 {
					_, err = p.Lookup(context.Background(), "stable")
				} else {
					_, err = p.Authenticate(context.Background(), "stable", "pw")
				}
				if err != nil {
					failures.Add(1)
				}
				_ = p.Users()
				_ = p.Problems()
			}
		}()
	}
	// Let the writer rewrite the file a few times whatever the machine's
	// load (a fixed sleep let it not run at all on a busy machine).
	testkit.Eventually(t, 10*time.Second, func() bool { return writes.Load() >= 5 }, func() string { return fmt.Sprintf("the file was rewritten %d times, want 5", writes.Load()) })
	close(stop)
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d lookups of the stable user failed during reloads", failures.Load())
	}
	if writes.Load() == 0 {
		t.Fatal("the file was never rewritten")
	}
}

func TestOpenPasswdFileErrors(t *testing.T) {
	f := newFixture(t)
	f.write(t, "alice:{PLAIN}a\n")
	tests := []struct {
		name string
		mod  func(o *PasswdFileOptions)
		kind failure.Kind
	}{
		{"missing file", func(o *PasswdFileOptions) { o.Path = filepath.Join(f.dir, "nope") }, failure.Temporary},
		{"directory", func(o *PasswdFileOptions) { o.Path = f.dir }, failure.Temporary},
		{"no path", func(o *PasswdFileOptions) { o.Path = "" }, failure.Permanent},
		{"relative mail root", func(o *PasswdFileOptions) { o.MailRoot = "mail" }, failure.Permanent},
		{"empty mail root", func(o *PasswdFileOptions) { o.MailRoot = "" }, failure.Permanent},
		{"absolute maildir name", func(o *PasswdFileOptions) { o.MaildirName = "/Maildir" }, failure.Permanent},
		{"maildir name with dotdot", func(o *PasswdFileOptions) { o.MaildirName = "../Maildir" }, failure.Permanent},
		{"bad delimiter", func(o *PasswdFileOptions) { o.Normalizer.Delimiters = "@" }, failure.BadInput},
		{"bad default domain", func(o *PasswdFileOptions) { o.Normalizer.DefaultDomain = "a..b" }, failure.BadInput},
		{"negative interval", func(o *PasswdFileOptions) { o.ReloadCheckInterval = -time.Second }, failure.Permanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := f.opts
			tt.mod(&o)
			p, err := OpenPasswdFile(o)
			if p != nil {
				t.Fatal("OpenPasswdFile returned a source")
			}
			wantKind(t, err, tt.kind, "")
		})
	}
}

func TestPasswdFileOptionDefaults(t *testing.T) {
	f := newFixture(t)
	f.opts.Logger = nil
	f.opts.MaildirName = "./Maildir/"
	f.opts.MailRoot = f.root + "/"
	p := f.open(t, "a@example.com:{PLAIN}x\n")
	if p.interval != time.Second {
		t.Fatalf("interval = %v", p.interval)
	}
	u := mustLookup(t, p, "a@example.com")
	if want := filepath.Join(f.root, "example.com", "a", "Maildir"); u.Mailbox != want {
		t.Fatalf("Mailbox = %q, want %q", u.Mailbox, want)
	}
}

func TestPasswdFileCloseAndContext(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "a:{PLAIN}x\n")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Lookup(ctx, "a")
	wantKind(t, err, failure.Temporary, "")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = p.Lookup(context.Background(), "a")
	wantKind(t, err, failure.Temporary, "")
	_, err = p.Authenticate(context.Background(), "a", "x")
	wantKind(t, err, failure.Temporary, "")
}

// The returned User is the caller's to modify.
func TestPasswdFileUserIsACopy(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, "a:{PLAIN}x:5\n")
	u := mustLookup(t, p, "a")
	u.UID = 99
	if mustLookup(t, p, "a").UID != 5 {
		t.Fatal("modifying a returned User changed the table")
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		unit int64
		want int64
		ok   bool
	}{
		{"10", 1, 10, true},
		{"10", 1024, 10240, true},
		{"10b", 1024, 10, true},
		{"10B", 1024, 10, true},
		{"1k", 1, 1024, true},
		{"1M", 1, 1 << 20, true},
		{"1g", 1, 1 << 30, true},
		{"3T", 1, 3 << 40, true},
		{"", 1, 0, false},
		{"G", 1, 0, false},
		{"1.5G", 1, 0, false},
		{"1GB", 1, 0, false},
		{"-1", 1, 0, false},
		{"8388608T", 1, 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in, tt.unit)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q, %d) = %d, %v; want %d ok=%v", tt.in, tt.unit, got, err, tt.want, tt.ok)
		}
	}
}

// Finding 11e: a passwd-file rewritten in place ("cat > users", an editor
// saving over the file) is briefly half written. A reload must not take
// that half: the previous users stay served, an address missing from a
// file still changing is a temporary failure (not 5.1.1), and the new
// version is taken once it has settled.
func TestPasswdFileInPlaceRewriteInTwoSteps(t *testing.T) {
	f := newFixture(t)
	f.opts.ReloadCheckInterval = time.Nanosecond // check on every lookup
	p := f.open(t, "alice:{PLAIN}a\nbob:{PLAIN}b\n")

	// Step one: truncate and write the first part of the new version
	// (same inode), as a shell redirection does.
	w, err := os.OpenFile(f.path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("alice:{PLAIN}a\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Lookup(context.Background(), "bob"); err != nil {
		t.Fatalf("bob, in the version served, lost to a half-written file: %v", err)
	}
	_, err = p.Lookup(context.Background(), "carol")
	wantKind(t, err, failure.Temporary, "")

	// Step two: the rest.
	if _, err := w.WriteString("bob:{PLAIN}b\ncarol:{PLAIN}c\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Lookup(context.Background(), "bob"); err != nil {
		t.Fatalf("bob: %v", err)
	}
	// A second later (on the clock the file is judged by) it has settled.
	p.mu.Lock()
	p.now = func() time.Time { return time.Now().Add(2 * reloadSettle) }
	p.mu.Unlock()
	if _, err := p.Lookup(context.Background(), "carol"); err != nil {
		t.Fatalf("carol after the file settled: %v", err)
	}
	if p.Users() != 3 {
		t.Fatalf("Users() = %d, want 3", p.Users())
	}
	_, err = p.Lookup(context.Background(), "dave")
	wantKind(t, err, failure.NotFound, reasonNoUser)
}

// A file whose server clock runs ahead of ours (its ctime in our future)
// is still taken, once the same version has been seen unchanged for the
// settle time on our clock.
func TestPasswdFileSettlesDespiteClockSkew(t *testing.T) {
	f := newFixture(t)
	f.opts.ReloadCheckInterval = time.Nanosecond
	p := f.open(t, "alice:{PLAIN}a\n")
	f.write(t, "alice:{PLAIN}a\nbob:{PLAIN}b\n")
	now := time.Now().Add(-time.Hour) // our clock an hour behind the file's
	p.mu.Lock()
	p.now = func() time.Time { return now }
	p.mu.Unlock()
	_, err := p.Lookup(context.Background(), "bob")
	wantKind(t, err, failure.Temporary, "")
	p.mu.Lock()
	now = now.Add(2 * reloadSettle)
	p.mu.Unlock()
	if _, err := p.Lookup(context.Background(), "bob"); err != nil {
		t.Fatalf("bob after the version was seen unchanged for the settle time: %v", err)
	}
}
