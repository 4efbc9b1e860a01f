package userdb

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// The directory of these tests: contrib/ldap's schema and example users,
// plus entries that exercise the refusals.
const (
	ldapSuffix    = "dc=example,dc=org"
	ldapServiceDN = "cn=nfsdrop,ou=services,dc=example,dc=org"
	ldapServicePW = "nfsdrop-service-example"
	alicePW       = "alice-example-pw"
	carolPW       = "carol-example-pw"
)

// ldapACL lets the service account read password hashes (compare mode).
var ldapACL = []string{
	`access to attrs=userPassword by self write by dn.exact="` + ldapServiceDN + `" read by anonymous auth by * none`,
	"access to * by * read",
}

// testEntries returns the extra entries; absolute mailbox paths need the
// mail root.
func testEntries(mailRoot string) string {
	return fmt.Sprintf(`dn: uid=dave,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: dave
cn: Dave
sn: Dave
mail: dave@example.org
nfsdropMailbox: example.org/../../etc/evil

dn: uid=erin,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: erin
cn: Erin
sn: Erin
mail: erin@example.org
nfsdropMailbox: /etc/nfsdrop-evil/Maildir

dn: uid=frank,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: frank
cn: Frank
sn: Frank
mail: frank@example.org
nfsdropMailbox: maildir:%[1]s/other/frank:LAYOUT=fs

dn: uid=dup1,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: dup1
cn: Dup
sn: One
mail: dup1@example.org
nfsdropAlias: shared@example.org

dn: uid=dup2,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: dup2
cn: Dup
sn: Two
mail: dup2@example.org
nfsdropAlias: shared@example.org

dn: uid=noaddr,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: nfsdropUser
uid: noaddr
cn: No
sn: Address
nfsdropAlias: noaddr@example.org

dn: uid=badquota,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: posixAccount
uid: badquota
cn: Bad
sn: Quota
mail: badquota@example.org
uidNumber: 4294967295
gidNumber: 5000
homeDirectory: /home/badquota
`, mailRoot)
}

func readContrib(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "contrib", "ldap", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startDirectory starts a slapd with the contrib schema and users and the
// test entries.
func startDirectory(t testing.TB, mailRoot string) *slapd.Server {
	t.Helper()
	return slapd.StartT(t, slapd.Options{
		Suffix:  ldapSuffix,
		Schemas: []string{"contrib/ldap/nfsdrop.schema"},
		LDIF:    []string{readContrib(t, "users.ldif"), testEntries(mailRoot)},
		ACL:     ldapACL,
	})
}

// testLDAPOptions are the settings of docs/ldap.md's OpenLDAP example.
func testLDAPOptions(t testing.TB, mailRoot string, uris ...string) LDAPOptions {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "bindpw")
	if err := os.WriteFile(pwFile, []byte(ldapServicePW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return LDAPOptions{
		URIs:             uris,
		BindDN:           ldapServiceDN,
		BindPasswordFile: pwFile,
		BaseDN:           "ou=people," + ldapSuffix,
		Scope:            "sub",
		UserFilter:       "(&(objectClass=inetOrgPerson)(|(mail=%s)(nfsdropAlias=%s)))",
		AuthMethod:       "bind",
		Attrs: LDAPAttributes{
			Address:       "mail",
			Aliases:       "nfsdropAlias",
			Mailbox:       "nfsdropMailbox",
			QuotaStorage:  "nfsdropQuotaBytes",
			QuotaMessages: "nfsdropQuotaMessages",
			UID:           "uidNumber",
			GID:           "gidNumber",
			Enabled:       "nfsdropEnabled",
			Password:      "userPassword",
		},
		EnabledValue:     "TRUE",
		Timeout:          2 * time.Second,
		PoolSize:         2,
		RetryBackoff:     200 * time.Millisecond,
		CacheSize:        100,
		CacheTTL:         time.Minute,
		NegativeCacheTTL: 10 * time.Second,
		CacheMaxStale:    time.Hour,
		MailRoot:         mailRoot,
		MaildirName:      "Maildir",
		Normalizer:       Normalizer{Delimiters: "+", DefaultDomain: "example.org"},
		DefaultQuota:     Quota{Bytes: 5 << 20, Messages: 50},
	}
}

func openTestLDAP(t testing.TB, opts LDAPOptions) (*LDAP, *testkit.LogBuffer) {
	t.Helper()
	logs := &testkit.LogBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := OpenLDAP(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, logs
}

func ldapWantKind(t testing.TB, what string, err error, kind failure.Kind) *failure.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, kind)
	}
	fe := failure.As(err)
	if fe.Kind != kind {
		t.Fatalf("%s: %v (kind %s), want kind %s", what, err, fe.Kind, kind)
	}
	return fe
}

func TestLDAPLookup(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	d, logs := openTestLDAP(t, testLDAPOptions(t, root, srv.URI))
	ctx := context.Background()

	alice := &User{Name: "alice@example.org", Mailbox: filepath.Join(root, "example.org/alice/Maildir"),
		UID: 5001, GID: 5000, Quota: Quota{Bytes: 1 << 30, Messages: 10000}, Enabled: true}
	bob := &User{Name: "bob@example.org", Address: "bob@example.org", Mailbox: filepath.Join(root, "example.org/bob/Maildir"),
		UID: -1, GID: -1, Quota: Quota{Bytes: 5 << 20, Messages: 50}, Enabled: true}
	for _, tt := range []struct {
		addr, address string
		want          *User
	}{
		{"alice@example.org", "alice@example.org", alice},
		{"<Alice@EXAMPLE.org>", "alice@example.org", alice},
		{"alice", "alice@example.org", alice},                   // default domain
		{"alice+lists@example.org", "alice@example.org", alice}, // detail removed
		{"a.smith@example.org", "a.smith@example.org", alice},   // alias
		{"postmaster@example.org", "postmaster@example.org", alice},
		{"a.smith+x@example.org", "a.smith@example.org", alice},
		{"bob@example.org", "bob@example.org", bob},
	} {
		u, err := d.Lookup(ctx, tt.addr)
		if err != nil {
			t.Errorf("Lookup(%q): %v", tt.addr, err)
			continue
		}
		want := *tt.want
		want.Address = tt.address
		if *u != want {
			t.Errorf("Lookup(%q) = %+v, want %+v", tt.addr, *u, want)
		}
	}
	// Absolute mailbox inside the root, written as a Dovecot location.
	if u, err := d.Lookup(ctx, "frank@example.org"); err != nil || u.Mailbox != filepath.Join(root, "other/frank") {
		t.Errorf("frank: %+v, %v", u, err)
	}

	ldapWantKind(t, "unknown", lookupErr(d, "nobody@example.org"), failure.NotFound)
	ldapWantKind(t, "other domain", lookupErr(d, "alice@example.net"), failure.NotFound)
	ldapWantKind(t, "disabled", lookupErr(d, "carol@example.org"), failure.Disabled)
	ldapWantKind(t, "bad address", lookupErr(d, "a@b@c"), failure.BadInput)

	for _, a := range []string{"dave@example.org", "erin@example.org"} {
		fe := ldapWantKind(t, a, lookupErr(d, a), failure.Permanent)
		if fe.Reason != reasonOutsideRoot {
			t.Errorf("%s: reason %q", a, fe.Reason)
		}
	}
	if l := logs.String(); !testContains(l, "ldap: mailbox path outside the mail root", "user=dave@example.org", "user=erin@example.org", "/etc/nfsdrop-evil") ||
		strings.Contains(l, "passwd-file") {
		t.Errorf("log of the refused mailboxes:\n%s", l)
	}
	ldapWantKind(t, "no primary address", lookupErr(d, "noaddr@example.org"), failure.Permanent)
	ldapWantKind(t, "uid -1", lookupErr(d, "badquota@example.org"), failure.Permanent)
	if l := logs.String(); !testContains(l, "no mail attribute", "uidNumber value") {
		t.Errorf("log of the unusable entries:\n%s", l)
	}

	fe := ldapWantKind(t, "ambiguous", lookupErr(d, "shared@example.org"), failure.Temporary)
	if fe.Reason != reasonLDAPAmbiguous {
		t.Errorf("ambiguous: reason %q", fe.Reason)
	}
	if l := logs.String(); !testContains(l, "configuration error: more than one entry matches", "uid=dup1", "uid=dup2") {
		t.Errorf("log of the ambiguous lookup:\n%s", l)
	}
}

func lookupErr(d DB, addr string) error {
	_, err := d.Lookup(context.Background(), addr)
	return err
}

func testContains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestLDAPCacheFollowsDirectory: entries come from the cache within their
// TTL and from the directory after it; negative entries too.
func TestLDAPCacheFollowsDirectory(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	opts := testLDAPOptions(t, root, srv.URI)
	const ttl = 500 * time.Millisecond
	opts.CacheTTL, opts.NegativeCacheTTL = ttl, ttl
	d, _ := openTestLDAP(t, opts)
	ctx := context.Background()

	start := time.Now()
	if u, err := d.Lookup(ctx, "bob@example.org"); err != nil || u.Quota.Messages != 50 {
		t.Fatalf("bob: %+v, %v", u, err)
	}
	ldapWantKind(t, "new user before", lookupErr(d, "new@example.org"), failure.NotFound)
	srv.Modify(t, func(c *ldap.Conn) error {
		m := ldap.NewModifyRequest("uid=bob,ou=people,"+ldapSuffix, nil)
		m.Add("objectClass", []string{"nfsdropUser"})
		m.Add("nfsdropQuotaMessages", []string{"7"})
		if err := c.Modify(m); err != nil {
			return err
		}
		m = ldap.NewModifyRequest("uid=carol,ou=people,"+ldapSuffix, nil)
		m.Add("nfsdropAlias", []string{"new@example.org"})
		return c.Modify(m)
	})
	// Within the TTLs: the old answers.
	u, err := d.Lookup(ctx, "bob@example.org")
	nerr := lookupErr(d, "new@example.org")
	if time.Since(start) < ttl {
		if err != nil || u.Quota.Messages != 50 {
			t.Fatalf("bob cached: %+v, %v", u, err)
		}
		ldapWantKind(t, "new user cached", nerr, failure.NotFound)
	} else {
		t.Log("too slow to check the answers within the TTL")
	}
	time.Sleep(time.Until(start.Add(ttl + 50*time.Millisecond)))
	if u, err := d.Lookup(ctx, "bob@example.org"); err != nil || u.Quota.Messages != 7 {
		t.Fatalf("bob after the TTL: %+v, %v", u, err)
	}
	ldapWantKind(t, "new user after the TTL", lookupErr(d, "new@example.org"), failure.Disabled)
}

func TestLDAPAuthenticateBind(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	d, _ := openTestLDAP(t, testLDAPOptions(t, root, srv.URI))
	testAuthenticate(t, d)

	// The search connections are still bound as the service account,
	// and the user binds went over other connections.
	d.search.mu.Lock()
	idle := append([]*ldapConn(nil), d.search.idle...)
	d.search.mu.Unlock()
	d.auth.mu.Lock()
	authIdle := len(d.auth.idle)
	d.auth.mu.Unlock()
	if len(idle) == 0 || authIdle == 0 {
		t.Fatalf("idle connections: %d for searches, %d for binds", len(idle), authIdle)
	}
	for _, c := range idle {
		who, err := c.l.WhoAmI(nil)
		if err != nil {
			t.Fatal(err)
		}
		if who.AuthzID != "dn:"+ldapServiceDN {
			t.Errorf("a search connection is bound as %q", who.AuthzID)
		}
	}
}

func TestLDAPAuthenticateCompare(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	opts := testLDAPOptions(t, root, srv.URI)
	opts.AuthMethod = "compare"
	d, _ := openTestLDAP(t, opts)
	testAuthenticate(t, d)

	// A service account that may not read userPassword: every login
	// fails, and the log says why.
	opts.BindDN, opts.BindPasswordFile = "", ""
	anon, logs := openTestLDAP(t, opts)
	if _, err := anon.Authenticate(context.Background(), "alice@example.org", alicePW); failure.KindOf(err) != failure.NotFound {
		t.Errorf("compare without access: %v", err)
	}
	if !strings.Contains(logs.String(), "no readable password attribute") {
		t.Errorf("log:\n%s", logs.String())
	}
}

func testAuthenticate(t *testing.T, d *LDAP) {
	t.Helper()
	ctx := context.Background()
	u, err := d.Authenticate(ctx, "alice@example.org", alicePW)
	if err != nil || u.Name != "alice@example.org" || u.Quota.Bytes != 1<<30 {
		t.Fatalf("alice: %+v, %v", u, err)
	}
	if u, err := d.Authenticate(ctx, "alice", alicePW); err != nil || u.Name != "alice@example.org" {
		t.Errorf("alice without domain: %+v, %v", u, err)
	}
	for _, tt := range []struct{ name, pw string }{
		{"alice@example.org", "wrong"},
		{"alice@example.org", alicePW + " "},
		{"alice@example.org", ""},
		{"nobody@example.org", alicePW},
		{"nobody@example.org", ""},
		{"*", alicePW},
		{"*@example.org", alicePW},
		{"bob@example.org", alicePW},
	} {
		_, err := d.Authenticate(ctx, tt.name, tt.pw)
		fe := ldapWantKind(t, fmt.Sprintf("Authenticate(%q, %q)", tt.name, tt.pw), err, failure.NotFound)
		if fe.Reason != reasonAuthFailed {
			t.Errorf("Authenticate(%q): reason %q", tt.name, fe.Reason)
		}
	}
	_, err = d.Authenticate(ctx, "carol@example.org", carolPW)
	ldapWantKind(t, "disabled carol", err, failure.Disabled)
	_, err = d.Authenticate(ctx, "carol@example.org", "wrong")
	ldapWantKind(t, "disabled carol, wrong password", err, failure.NotFound)
}

// TestLDAPAuthCache: a successful login is remembered by a hash of the
// password for AuthCacheTTL, never longer, even with the directory down.
func TestLDAPAuthCache(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	opts := testLDAPOptions(t, root, srv.URI)
	opts.AuthCacheTTL = time.Second
	d, _ := openTestLDAP(t, opts)
	ctx := context.Background()
	if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
		t.Fatal(err)
	}
	for _, ae := range d.authCache.m {
		if ae.e.passwords != nil {
			t.Error("the auth cache keeps stored passwords")
		}
	}
	srv.Kill()
	if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
		t.Fatalf("cached login: %v", err)
	}
	_, err := d.Authenticate(ctx, "alice@example.org", "wrong")
	ldapWantKind(t, "wrong password, directory down", err, failure.Temporary)
	time.Sleep(time.Second)
	_, err = d.Authenticate(ctx, "alice@example.org", alicePW)
	ldapWantKind(t, "after the auth TTL, directory down", err, failure.Temporary)
}

// TestLDAPFailover: with the first server killed, lookups go on on the
// second; a restarted server is used again.
func TestLDAPFailover(t *testing.T) {
	root := t.TempDir()
	s1 := startDirectory(t, root)
	s2 := startDirectory(t, root)
	opts := testLDAPOptions(t, root, s1.URI, s2.URI)
	opts.CacheSize = 0 // every lookup goes to the directory
	d, logs := openTestLDAP(t, opts)
	ctx := context.Background()
	for range 3 {
		if _, err := d.Lookup(ctx, "alice@example.org"); err != nil {
			t.Fatal(err)
		}
	}
	s1.Kill()
	for i := range 20 {
		if _, err := d.Lookup(ctx, "alice@example.org"); err != nil {
			t.Fatalf("lookup %d with the first server down: %v", i, err)
		}
		if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
			t.Fatalf("login %d with the first server down: %v", i, err)
		}
	}
	if !testContains(logs.String(), "ldap: server failed", s1.URI) {
		t.Errorf("no log of the failover:\n%s", logs.String())
	}
	s2.Kill()
	ldapWantKind(t, "both down", lookupErr(d, "alice@example.org"), failure.Temporary)

	// Reconnect once a server is back (after its back-off).
	s1.Restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := d.Lookup(ctx, "alice@example.org")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnection: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "ldap: server answers again") {
		t.Errorf("no log of the recovery:\n%s", logs.String())
	}
}

// TestLDAPHang: a server that accepts connections and then stops answering
// (SIGSTOP) costs one timeout, not more; nothing is left running.
func TestLDAPHang(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	before := runtime.NumGoroutine()
	opts := testLDAPOptions(t, root, srv.URI)
	opts.Timeout = 500 * time.Millisecond
	opts.CacheSize = 0
	opts.RetryBackoff = 100 * time.Millisecond
	logs := &testkit.LogBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	d, err := OpenLDAP(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A pooled search connection and a pooled bind connection.
	if _, err := d.Authenticate(ctx, "alice@example.org", alicePW); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	defer srv.Cont()
	check := func(what string, f func() error) {
		t.Helper()
		start := time.Now()
		err := f()
		took := time.Since(start)
		ldapWantKind(t, what, err, failure.Temporary)
		if took > opts.Timeout+700*time.Millisecond {
			t.Errorf("%s took %v with a timeout of %v", what, took, opts.Timeout)
		}
		t.Logf("%s: %v after %v", what, err, took.Round(time.Millisecond))
	}
	// On the pooled connection (the search hangs) ...
	check("lookup on a pooled connection", func() error { return lookupErr(d, "alice@example.org") })
	// ... on a new one (the service bind hangs), after the back-off ...
	time.Sleep(150 * time.Millisecond)
	check("lookup on a new connection", func() error { return lookupErr(d, "bob@example.org") })
	time.Sleep(150 * time.Millisecond)
	check("login", func() error { _, err := d.Authenticate(ctx, "alice@example.org", alicePW); return err })
	// ... and a context deadline shorter than the timeout is honoured.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	time.Sleep(150 * time.Millisecond)
	start := time.Now()
	_, err = d.Lookup(short, "alice@example.org")
	ldapWantKind(t, "short context", err, failure.Temporary)
	if took := time.Since(start); took > 600*time.Millisecond {
		t.Errorf("short context: took %v", took)
	}
	if !strings.Contains(logs.String(), "no answer within 500ms") {
		t.Errorf("log does not name the timeout:\n%s", logs.String())
	}

	d.Close()
	srv.Cont()
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d before, %d after Close\n%s", before, n, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLDAPOutageCache: with the directory down, Lookup answers from a cached
// entry past its TTL (and logs it), up to CacheMaxStale; without one, it
// fails temporarily. A negative entry never makes it bounce.
func TestLDAPOutageCache(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	opts := testLDAPOptions(t, root, srv.URI)
	opts.CacheTTL, opts.NegativeCacheTTL = 50*time.Millisecond, 50*time.Millisecond
	opts.CacheMaxStale = time.Hour
	d, logs := openTestLDAP(t, opts)
	opts.CacheMaxStale = 0
	noStale, _ := openTestLDAP(t, opts)
	for _, db := range []*LDAP{d, noStale} {
		for _, a := range []string{"alice@example.org", "a.smith+tag@example.org"} {
			if _, err := db.Lookup(context.Background(), a); err != nil {
				t.Fatal(err)
			}
		}
		ldapWantKind(t, "unknown", lookupErr(db, "nobody@example.org"), failure.NotFound)
	}
	time.Sleep(60 * time.Millisecond)
	srv.Kill()

	u, err := d.Lookup(context.Background(), "alice@example.org")
	if err != nil || u.Name != "alice@example.org" || u.Quota.Bytes != 1<<30 {
		t.Fatalf("stale lookup: %+v, %v", u, err)
	}
	// The unsplit form was not found before: the stale negative entry
	// lets the lookup go on to the split form.
	if _, err := d.Lookup(context.Background(), "a.smith+tag@example.org"); err != nil {
		t.Fatalf("stale lookup with a detail: %v", err)
	}
	if l := logs.String(); !testContains(l, "directory unavailable, using a cached entry past its TTL", "address=alice@example.org") {
		t.Errorf("no warning about the stale entry:\n%s", l)
	}
	ldapWantKind(t, "cold", lookupErr(d, "bob@example.org"), failure.Temporary)
	ldapWantKind(t, "stale negative", lookupErr(d, "nobody@example.org"), failure.Temporary)
	ldapWantKind(t, "no staleness allowed", lookupErr(noStale, "alice@example.org"), failure.Temporary)
	_, err = d.Authenticate(context.Background(), "alice@example.org", alicePW)
	ldapWantKind(t, "login from the lookup cache", err, failure.Temporary)
}

// TestLDAPServerRefusals: a server-side size limit and an operation the
// server is unwilling to perform are temporary failures, not unknown users.
func TestLDAPServerRefusals(t *testing.T) {
	root := t.TempDir()
	for name, extra := range map[string][]string{
		"size limit":         {"limits * size=1"},
		"unwilling (search)": {"restrict search"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := slapd.StartT(t, slapd.Options{
				Suffix:  ldapSuffix,
				Schemas: []string{"contrib/ldap/nfsdrop.schema"},
				LDIF:    []string{readContrib(t, "users.ldif"), testEntries(root)},
				ACL:     ldapACL,
				Extra:   extra,
			})
			d, _ := openTestLDAP(t, testLDAPOptions(t, root, srv.URI))
			addr := "shared@example.org" // two entries
			if name == "unwilling (search)" {
				addr = "alice@example.org"
			}
			fe := ldapWantKind(t, addr, lookupErr(d, addr), failure.Temporary)
			t.Logf("%s: %v", addr, fe)
			_, err := d.Authenticate(context.Background(), addr, alicePW)
			ldapWantKind(t, "login", err, failure.Temporary)
		})
	}
}

// TestLDAPFilterInjection: values are escaped, so filter syntax in an
// address matches nothing, whether or not the address parser lets it
// through.
func TestLDAPFilterInjection(t *testing.T) {
	root := t.TempDir()
	srv := startDirectory(t, root)
	d, _ := openTestLDAP(t, testLDAPOptions(t, root, srv.URI))
	ctx := context.Background()
	payloads := []string{
		"*", "*@example.org", "a*@example.org", ")(uid=*", "*)(uid=*))(|(uid=*", "alice@example.org)(mail=*",
		`\2a`, `\00`, "\x00", "alice\x00@example.org", "alice@example.org\x00", "(", ")", `\`,
		strings.Repeat("a", 5000) + "@example.org", strings.Repeat("*", 10000), strings.Repeat(")(", 3000),
	}
	for _, p := range payloads {
		if u, err := d.Lookup(ctx, p); err == nil {
			t.Errorf("Lookup(%.40q) found %s", p, u.Name)
		} else if k := failure.KindOf(err); k != failure.NotFound && k != failure.BadInput {
			t.Errorf("Lookup(%.40q): %v", p, err)
		}
		// Below the address parser: straight into the filter.
		for _, tmpl := range []filterTemplate{d.userTmpl, d.authTmpl} {
			local, domain, _ := strings.Cut(p, "@")
			e, err := d.find(ctx, "test", tmpl, local, domain, d.userAttrs)
			if err != nil || e != nil {
				t.Errorf("find(%.40q) = %v, %v", p, e, err)
			}
		}
	}
}

// TestLDAPPlainInetOrgPerson: the defaults work on a directory with only
// the standard schemas: the nfsdrop attributes in the filter and the
// attribute list are simply absent.
func TestLDAPPlainInetOrgPerson(t *testing.T) {
	root := t.TempDir()
	srv := slapd.StartT(t, slapd.Options{Suffix: ldapSuffix, LDIF: []string{`dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: uid=bob,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Jones
mail: bob@example.org
userPassword: ` + slapd.HashPassword(t, "bob-pw") + `
`}})
	opts := testLDAPOptions(t, root, srv.URI)
	opts.BindDN, opts.BindPasswordFile = "", ""
	opts.BaseDN = ldapSuffix
	d, _ := openTestLDAP(t, opts)
	u, err := d.Lookup(context.Background(), "bob@example.org")
	if err != nil || u.Mailbox != filepath.Join(root, "example.org/bob/Maildir") || !u.Enabled {
		t.Fatalf("bob: %+v, %v", u, err)
	}
	if _, err := d.Authenticate(context.Background(), "bob", "bob-pw"); err != nil {
		t.Fatalf("bob's login: %v", err)
	}
}

// TestLDAPContribFiles: contrib/ldap's schema loads both ways (slapd.conf
// include and cn=config LDIF), its users load with it, and the settings of
// docs/ldap.md read them.
func TestLDAPContribFiles(t *testing.T) {
	root := t.TempDir()
	users := readContrib(t, "users.ldif")
	for name, opts := range map[string]slapd.Options{
		"slapd.conf include": {Schemas: []string{"contrib/ldap/nfsdrop.schema"}, LDIF: []string{users}},
		"cn=config LDIF":     {ConfigLDIF: []string{"contrib/ldap/nfsdrop.ldif"}, LDIF: []string{users}},
	} {
		t.Run(name, func(t *testing.T) {
			srv := slapd.StartT(t, opts)
			d, _ := openTestLDAP(t, testLDAPOptions(t, root, srv.URI))
			u, err := d.Lookup(context.Background(), "a.smith@example.org")
			if err != nil {
				t.Fatal(err)
			}
			want := User{Name: "alice@example.org", Address: "a.smith@example.org", Mailbox: filepath.Join(root, "example.org/alice/Maildir"),
				UID: 5001, GID: 5000, Quota: Quota{Bytes: 1 << 30, Messages: 10000}, Enabled: true}
			if *u != want {
				t.Errorf("alice = %+v, want %+v", *u, want)
			}
			ldapWantKind(t, "carol", lookupErr(d, "carol@example.org"), failure.Disabled)
			if _, err := d.Authenticate(context.Background(), "bob@example.org", "bob-example-pw"); err != nil {
				t.Errorf("bob's login: %v", err)
			}
		})
	}
}

// TestLDAPSchemaFilesAgree: nfsdrop.schema and nfsdrop.ldif define the same
// object identifiers, attribute types and object classes.
func TestLDAPSchemaFilesAgree(t *testing.T) {
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	var fromSchema []string
	var cur strings.Builder
	flush := func() {
		if cur.Len() > 0 {
			fromSchema = append(fromSchema, norm(cur.String()))
			cur.Reset()
		}
	}
	for line := range strings.SplitSeq(readContrib(t, "nfsdrop.schema"), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "#") || trimmed == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			cur.WriteString(" " + trimmed)
		default:
			flush()
			kw, rest, _ := strings.Cut(trimmed, " ")
			cur.WriteString(strings.ToLower(kw) + " " + rest)
		}
	}
	flush()
	var fromLDIF []string
	keyword := map[string]string{"olcobjectidentifier": "objectidentifier", "olcattributetypes": "attributetype", "olcobjectclasses": "objectclass"}
	for line := range strings.SplitSeq(readContrib(t, "nfsdrop.ldif"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if kw, known := keyword[strings.ToLower(k)]; ok && known {
			fromLDIF = append(fromLDIF, norm(kw+" "+v))
		}
	}
	if strings.Join(fromSchema, "\n") != strings.Join(fromLDIF, "\n") {
		t.Errorf("nfsdrop.schema and nfsdrop.ldif differ:\nschema:\n%s\nldif:\n%s", strings.Join(fromSchema, "\n"), strings.Join(fromLDIF, "\n"))
	}
	if len(fromSchema) != 9 {
		t.Errorf("%d definitions, want 9 (3 OIDs, 5 attribute types, 1 class)", len(fromSchema))
	}
}

func TestFilterTemplate(t *testing.T) {
	tmpl, err := parseFilterTemplate("(&(objectClass=user)(|(mail=%s)(proxyAddresses=smtp:%s)(sAMAccountName=%u))(c=%d)(x=100%%))")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ addr, local, domain, want string }{
		{"a@b.c", "a", "b.c", "(&(objectClass=user)(|(mail=a@b.c)(proxyAddresses=smtp:a@b.c)(sAMAccountName=a))(c=b.c)(x=100%))"},
		{"*)(uid=*", "*", ")(", `(&(objectClass=user)(|(mail=\2a\29\28uid=\2a)(proxyAddresses=smtp:\2a\29\28uid=\2a)(sAMAccountName=\2a))(c=\29\28)(x=100%))`},
		{"\x00\\é", "", "", `(&(objectClass=user)(|(mail=\00\5c\c3\a9)(proxyAddresses=smtp:\00\5c\c3\a9)(sAMAccountName=))(c=)(x=100%))`},
	} {
		got := tmpl.expand(tt.addr, tt.local, tt.domain)
		if got != tt.want {
			t.Errorf("expand(%q) = %s, want %s", tt.addr, got, tt.want)
		}
		if _, err := ldap.CompileFilter(got); err != nil && tt.local != "" {
			t.Errorf("expand(%q) does not compile: %v", tt.addr, err)
		}
	}
	for _, bad := range []string{"", "(mail=x)", "(mail=%s", "(mail=%x)", "(mail=%s)%", "(c=%d)"} {
		if _, err := parseFilterTemplate(bad); err == nil {
			t.Errorf("parseFilterTemplate(%q): no error", bad)
		}
	}
}

func TestLDAPOptionsRefused(t *testing.T) {
	root := t.TempDir()
	base := testLDAPOptions(t, root, "ldap://127.0.0.1:1")
	for name, mutate := range map[string]func(*LDAPOptions){
		"no uri":          func(o *LDAPOptions) { o.URIs = nil },
		"bad scheme":      func(o *LDAPOptions) { o.URIs = []string{"http://x"} },
		"uri with dn":     func(o *LDAPOptions) { o.URIs = []string{"ldap://x/dc=example"} },
		"no host":         func(o *LDAPOptions) { o.URIs = []string{"ldap:///"} },
		"bad port":        func(o *LDAPOptions) { o.URIs = []string{"ldap://x:0"} },
		"no base":         func(o *LDAPOptions) { o.BaseDN = "" },
		"bad base":        func(o *LDAPOptions) { o.BaseDN = "not a dn" },
		"bad scope":       func(o *LDAPOptions) { o.Scope = "tree" },
		"bad filter":      func(o *LDAPOptions) { o.UserFilter = "(mail=%s" },
		"bad auth filter": func(o *LDAPOptions) { o.AuthFilter = "(uid=x)" },
		"bad method":      func(o *LDAPOptions) { o.AuthMethod = "sasl" },
		"compare no attr": func(o *LDAPOptions) { o.AuthMethod, o.Attrs.Password = "compare", "" },
		"no address attr": func(o *LDAPOptions) { o.Attrs.Address = "" },
		"no pw file":      func(o *LDAPOptions) { o.BindPasswordFile = "" },
		"missing pw file": func(o *LDAPOptions) { o.BindPasswordFile = filepath.Join(root, "nope") },
		"bad ca":          func(o *LDAPOptions) { o.CAFile = o.BindPasswordFile },
		"relative root":   func(o *LDAPOptions) { o.MailRoot = "mail" },
		"negative":        func(o *LDAPOptions) { o.Timeout = -1 },
	} {
		o := base
		mutate(&o)
		if d, err := OpenLDAP(o); err == nil {
			d.Close()
			t.Errorf("%s: no error", name)
		}
	}
	d, err := OpenLDAP(base)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := d.Lookup(context.Background(), "alice@example.org"); failure.KindOf(err) != failure.Temporary {
		t.Errorf("after Close: %v", err)
	}
}

func TestLDAPClassify(t *testing.T) {
	for _, tt := range []struct {
		err    error
		class  errClass
		outage bool
	}{
		{ldap.NewError(ldap.ErrorNetwork, errors.New("x")), classBroken, true},
		{errors.New("unable to read LDAP response packet: i/o timeout"), classBroken, true},
		{ldap.NewError(ldap.LDAPResultBusy, errors.New("x")), classServer, true},
		{ldap.NewError(ldap.LDAPResultUnavailable, errors.New("x")), classServer, true},
		{ldap.NewError(ldap.LDAPResultUnwillingToPerform, errors.New("x")), classAnswer, true},
		{ldap.NewError(ldap.LDAPResultSizeLimitExceeded, errors.New("x")), classAnswer, false},
		{ldap.NewError(ldap.LDAPResultInvalidCredentials, errors.New("x")), classAnswer, false},
		{ldap.NewError(ldap.LDAPResultNoSuchObject, errors.New("x")), classAnswer, false},
	} {
		c, o := classify(tt.err)
		if c != tt.class || o != tt.outage {
			t.Errorf("classify(%v) = %v, %v; want %v, %v", tt.err, c, o, tt.class, tt.outage)
		}
	}
}

// BenchmarkLookup compares a lookup answered by the cache ("warm") with one
// that searches the directory every time ("cold", the cache off).
func BenchmarkLookup(b *testing.B) {
	root := b.TempDir()
	srv := startDirectory(b, root)
	for _, bc := range []struct {
		name  string
		cache int
	}{{"warm", 100}, {"cold", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			opts := testLDAPOptions(b, root, srv.URI)
			opts.CacheSize = bc.cache
			d, _ := openTestLDAP(b, opts)
			ctx := context.Background()
			if _, err := d.Lookup(ctx, "alice@example.org"); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := d.Lookup(ctx, "alice@example.org"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// testCA makes a CA and a certificate for 127.0.0.1 signed by it, PEM.
func testCA(t testing.TB) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, key := newKey(), newKey()
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nfsdrop test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// TestLDAPTLS: ldaps:// and StartTLS, with the server's certificate checked
// against ca_file; a wrong CA is a temporary failure, never a fallback to
// plain text.
func TestLDAPTLS(t *testing.T) {
	caPEM, certPEM, keyPEM := testCA(t)
	otherCA, _, _ := testCA(t)
	root := t.TempDir()
	srv := slapd.StartT(t, slapd.Options{
		Suffix:  ldapSuffix,
		Schemas: []string{"contrib/ldap/nfsdrop.schema"},
		LDIF:    []string{readContrib(t, "users.ldif")},
		ACL:     ldapACL,
		TLSCert: certPEM, TLSKey: keyPEM,
	})
	files := t.TempDir()
	for name, data := range map[string][]byte{"ca.pem": caPEM, "other.pem": otherCA} {
		if err := os.WriteFile(filepath.Join(files, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name     string
		uri      string
		startTLS bool
		ca       string
		ok       bool
	}{
		{"ldaps", srv.URITLS, false, "ca.pem", true},
		{"starttls", srv.URI, true, "ca.pem", true},
		{"ldaps wrong CA", srv.URITLS, false, "other.pem", false},
		{"starttls wrong CA", srv.URI, true, "other.pem", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := testLDAPOptions(t, root, tt.uri)
			opts.StartTLS, opts.CAFile = tt.startTLS, filepath.Join(files, tt.ca)
			d, logs := openTestLDAP(t, opts)
			_, err := d.Lookup(context.Background(), "alice@example.org")
			_, aerr := d.Authenticate(context.Background(), "alice@example.org", alicePW)
			if tt.ok {
				if err != nil || aerr != nil {
					t.Fatalf("lookup: %v; login: %v", err, aerr)
				}
				// Every connection really is encrypted.
				for _, p := range []*ldapPool{d.search, d.auth} {
					p.mu.Lock()
					for _, c := range p.idle {
						if _, ok := c.l.TLSConnectionState(); !ok {
							t.Error("a connection without TLS")
						}
					}
					p.mu.Unlock()
				}
				return
			}
			ldapWantKind(t, "lookup", err, failure.Temporary)
			ldapWantKind(t, "login", aerr, failure.Temporary)
			if !strings.Contains(logs.String(), "certificate") {
				t.Errorf("log does not name the certificate problem:\n%s", logs.String())
			}
		})
	}
}
