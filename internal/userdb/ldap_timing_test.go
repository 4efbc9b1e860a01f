package userdb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"sync"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// ldapOpCounter is a TCP proxy in front of a directory that counts the
// LDAP requests going through it, by protocol operation.
type ldapOpCounter struct {
	URI string

	mu  sync.Mutex
	ops map[string]int
}

// ldapOpNames names the request tags of RFC 4511 section 4.2.
var ldapOpNames = map[ber.Tag]string{
	0: "bind", 2: "unbind", 3: "search", 6: "modify", 8: "add", 10: "delete",
	12: "modrdn", 14: "compare", 16: "abandon", 23: "extended",
}

// countLDAPOps starts a proxy to upstream (ldap://host:port).
func countLDAPOps(t *testing.T, upstream string) *ldapOpCounter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &ldapOpCounter{URI: "ldap://" + l.Addr().String(), ops: map[string]int{}}
	addr := upstream[len("ldap://"):]
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.relay(c, addr)
		}
	}()
	return p
}

// relay copies one connection both ways, reading the client's side one
// LDAP message at a time to count it.
func (p *ldapOpCounter) relay(c net.Conn, addr string) {
	defer c.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(c, up)
		c.Close()
	}()
	var raw bytes.Buffer
	for {
		raw.Reset()
		pkt, err := ber.ReadPacket(io.TeeReader(c, &raw))
		if err != nil {
			return
		}
		name := "unknown"
		if len(pkt.Children) >= 2 {
			if n, ok := ldapOpNames[pkt.Children[1].Tag]; ok {
				name = n
			}
		}
		p.mu.Lock()
		p.ops[name]++
		p.mu.Unlock()
		if _, err := up.Write(raw.Bytes()); err != nil {
			return
		}
	}
}

func (p *ldapOpCounter) snapshot() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.ops)
}

// during returns the requests sent while f ran.
func (p *ldapOpCounter) during(f func()) map[string]int {
	before := p.snapshot()
	f()
	after := p.snapshot()
	for k, v := range before {
		if after[k] -= v; after[k] == 0 {
			delete(after, k)
		}
	}
	return after
}

// TestLDAPAuthenticateUnknownUserCostsAWrongPassword: in bind mode, a login
// with an unknown name makes the same requests of the directory as one
// with a known name and a wrong password (a search, then a bind), so the
// time it takes does not tell which names exist. The requests are counted
// on the wire, with the real slapd behind.
func TestLDAPAuthenticateUnknownUserCostsAWrongPassword(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	proxy := countLDAPOps(t, srv.URI)
	d, _ := openTestLDAP(t, testLDAPOptions(t, root, proxy.URI))
	ctx := context.Background()
	// Open the pooled connections first: connecting (and the service
	// bind of a search connection) happens once, not per login.
	if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
		t.Fatal(err)
	}
	login := func(name, pw string) map[string]int {
		return proxy.during(func() {
			_, err := d.Authenticate(ctx, name, pw)
			fe := ldapWantKind(t, fmt.Sprintf("Authenticate(%q)", name), err, failure.NotFound)
			if fe.Reason != reasonAuthFailed {
				t.Errorf("Authenticate(%q): reason %q, want %q", name, fe.Reason, reasonAuthFailed)
			}
		})
	}
	for _, tc := range []struct{ known, unknown string }{
		{"alice@example.org", "nobody@example.org"},
		{"alice+lists@example.org", "nobody+lists@example.org"}, // two searches each
		{"alice", "nobody"},
	} {
		wrong := login(tc.known, "wrong password")
		unknown := login(tc.unknown, "wrong password")
		t.Logf("%s, wrong password: %v; %s: %v", tc.known, wrong, tc.unknown, unknown)
		if wrong["bind"] != 1 || wrong["search"] == 0 {
			t.Errorf("%s, wrong password: requests %v, want a search and one bind", tc.known, wrong)
		}
		if !maps.Equal(wrong, unknown) {
			t.Errorf("requests differ: %v for %s with a wrong password, %v for unknown %s", wrong, tc.known, unknown, tc.unknown)
		}
	}
	// The pool is still healthy: the right password works.
	if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
		t.Fatalf("alice after the failed logins: %v", err)
	}
}

// TestPasswdFileUnknownUserDummyScheme: an unknown user's login verifies
// the password against a dummy hash of the scheme most users have, so it
// costs what a known user's wrong password costs even when the file
// starts with an odd entry (a {PLAIN} test account before the
// SHA512-CRYPT users would make unknown names cheap, and telling).
func TestPasswdFileUnknownUserDummyScheme(t *testing.T) {
	hash := func(scheme, pw string) string {
		h, err := HashPassword(scheme, pw)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range []struct {
		name  string
		lines []string
		want  string // the dummy's scheme
	}{
		{"one scheme", []string{"a:" + hash("SSHA", "x") + "::::::", "b:" + hash("SSHA", "y") + "::::::"}, "SSHA"},
		{"odd first entry", []string{
			"test:{PLAIN}test::::::",
			"a:" + hash("SHA512-CRYPT", "x") + "::::::",
			"b:" + hash("SHA512-CRYPT", "y") + "::::::",
		}, "SHA512-CRYPT"},
		{"no password at all", []string{"a:::::::"}, "SHA512-CRYPT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			p := f.open(t, f.lines(tc.lines...))
			dummy := p.tab.Load().dummy
			if scheme, _ := splitScheme(dummy); scheme != tc.want {
				t.Errorf("dummy hash scheme %s, want %s", scheme, tc.want)
			}
			_, err := p.Authenticate(context.Background(), "nobody", "x")
			wantKind(t, err, failure.NotFound, reasonAuthFailed)
		})
	}
}

// BenchmarkAuthenticateFailure compares the time of a failed login for an
// unknown name and for a known name with a wrong password (they should be
// close: see TestLDAPAuthenticateUnknownUserCostsAWrongPassword and
// TestPasswdFileUnknownUserDummyScheme).
//
//	go test -run '^$' -bench AuthenticateFailure ./internal/userdb/
func BenchmarkAuthenticateFailure(b *testing.B) {
	run := func(b *testing.B, db DB, name string) {
		ctx := context.Background()
		for b.Loop() {
			if _, err := db.Authenticate(ctx, name, "wrong password"); failure.KindOf(err) != failure.NotFound {
				b.Fatalf("%s: %v", name, err)
			}
		}
	}
	b.Run("ldap-bind", func(b *testing.B) {
		root := b.TempDir()
		srv := startDirectory(b, root)
		d, _ := openTestLDAP(b, testLDAPOptions(b, root, srv.URI))
		b.Run("wrong-password", func(b *testing.B) { run(b, d, "alice@example.org") })
		b.Run("unknown-user", func(b *testing.B) { run(b, d, "nobody@example.org") })
	})
	b.Run("passwd-file", func(b *testing.B) {
		dir := b.TempDir()
		path := dir + "/users"
		h, err := HashPassword("SHA512-CRYPT", "secret")
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("test:{PLAIN}test::::::\nalice@example.org:"+h+"::::::\nbob@example.org:"+h+"::::::\n"), 0o600); err != nil {
			b.Fatal(err)
		}
		p, err := OpenPasswdFile(PasswdFileOptions{Path: path, MailRoot: dir, MaildirName: "Maildir"})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		b.Run("wrong-password", func(b *testing.B) { run(b, p, "alice@example.org") })
		b.Run("unknown-user", func(b *testing.B) { run(b, p, "nobody@example.org") })
	})
}
