package main

// End-to-end tests of userdb.driver = "ldap" with a real slapd
// (internal/testenv/slapd) loaded with an LDIF written here, using
// contrib/ldap/nfsdrop.schema for the quota, mailbox, alias and enabled
// attributes: Postfix → LMTP → nfsdrop lmtpd (lookups, aliases, a disabled
// account, the quota from the directory at RCPT time, slapd killed in the
// middle of a run) and POP3 logins by bind with Python's poplib (right
// and wrong passwords, slapd frozen).
//
// Every identifier here starts with "ldapE2E" (or peer, from
// peer_e2e_helpers_test.go) so as not to collide with the other tests.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
)

const (
	ldapE2EServicePW = "service-secret"
	ldapE2EAlicePW   = "alice-secret"
	// ldapE2EAliceBox is alice's nfsdropMailbox, relative to the mail root.
	ldapE2EAliceBox = "boxes/alice/Maildir"
	// ldapE2EDaveQuota is dave's nfsdropQuotaBytes; his mailbox is made
	// to hold more than that before any delivery.
	ldapE2EDaveQuota = 1000
)

// ldapE2ELDIF is the directory: a service account nfsdrop binds as, and
// users with and without the nfsdropUser class:
//
//	alice  nfsdropMailbox, an alias (nfsdropAlias), quota, enabled, a password
//	bob    a plain inetOrgPerson: default Maildir, default quota
//	carol  nfsdropEnabled: FALSE
//	dave   nfsdropQuotaBytes: 1000 (his mailbox is already fuller)
//	erin   a plain inetOrgPerson
func ldapE2ELDIF(t *testing.T) string {
	t.Helper()
	user := func(uid, mail string, extra ...string) string {
		lines := []string{
			"dn: uid=" + uid + ",ou=people,dc=example,dc=org",
			"objectClass: inetOrgPerson",
		}
		if len(extra) > 0 {
			lines = append(lines, "objectClass: nfsdropUser")
		}
		lines = append(lines, "uid: "+uid, "cn: "+uid, "sn: "+uid, "mail: "+mail,
			"userPassword: "+slapd.HashPassword(t, uid+"-secret"))
		return strings.Join(append(lines, extra...), "\n") + "\n"
	}
	return strings.Join([]string{
		"dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
		"dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n",
		"dn: ou=services,dc=example,dc=org\nobjectClass: organizationalUnit\nou: services\n",
		"dn: cn=nfsdrop,ou=services,dc=example,dc=org\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n" +
			"cn: nfsdrop\nuserPassword: " + slapd.HashPassword(t, ldapE2EServicePW) + "\n",
		user("alice", "alice@example.org", "nfsdropAlias: a.smith@example.org", "nfsdropMailbox: "+ldapE2EAliceBox,
			"nfsdropQuotaBytes: 10485760", "nfsdropQuotaMessages: 1000", "nfsdropEnabled: TRUE"),
		user("bob", "bob@example.org"),
		user("carol", "carol@example.org", "nfsdropEnabled: FALSE"),
		user("dave", "dave@example.org", "nfsdropQuotaBytes: "+strconv.Itoa(ldapE2EDaveQuota)),
		user("erin", "erin@example.org"),
	}, "\n")
}

// ldapE2EStart starts slapd with nfsdrop's schema and the directory.
func ldapE2EStart(t *testing.T) *slapd.Server {
	t.Helper()
	return slapd.StartT(t, slapd.Options{
		Schemas: []string{"contrib/ldap/nfsdrop.schema"},
		LDIF:    []string{ldapE2ELDIF(t)},
		Extra:   []string{"index nfsdropAlias eq"},
	})
}

// ldapE2ESections are the [userdb] and [ldap] sections for srv, with a
// one-second timeout and back-off, then extra [ldap] lines.
func (w *peerWorld) ldapE2ESections(srv *slapd.Server, extra ...string) string {
	w.t.Helper()
	pw := filepath.Join(w.dir, "ldap.password")
	if err := os.WriteFile(pw, []byte(ldapE2EServicePW+"\n"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	s := fmt.Sprintf(`[userdb]
driver = "ldap"
default_domain = "example.org"
recipient_delimiter = "+"

[ldap]
uris = [%q]
bind_dn = "cn=nfsdrop,ou=services,dc=example,dc=org"
bind_password_file = %q
base_dn = "ou=people,dc=example,dc=org"
timeout = "1s"
retry_backoff = "1s"
`, srv.URI, pw)
	for _, l := range extra {
		s += l + "\n"
	}
	return s
}

// ldapE2EMaildir is where the directory puts addr's mail.
func (w *peerWorld) ldapE2EMaildir(addr string) string {
	if addr == "alice@example.org" || addr == "a.smith@example.org" {
		return filepath.Join(w.root, ldapE2EAliceBox)
	}
	return peerMaildir(w.root, addr)
}

// TestLDAPE2EPostfix: Postfix delivers over LMTP to lmtpd, which finds its
// users in slapd: by address and by alias (into the mailbox the directory
// names), a plain inetOrgPerson into the default Maildir; a disabled
// account, an unknown address and a mailbox over its LDAP quota are
// refused at RCPT time and bounced with 550 5.2.1, 550 5.1.1 and 552 5.2.2.
func TestLDAPE2EPostfix(t *testing.T) {
	t.Parallel()
	srv := ldapE2EStart(t)
	w := newPeerWorld(t)

	// dave's mailbox holds 4000 bytes, over his 1000-byte LDAP quota.
	dave := peerMaildir(w.root, "dave@example.org")
	for _, d := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dave, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := filepath.Join(dave, "cur", "1700000000.M1P1Q1R0a0b0c0d."+peerHost+",S=4000,W=4080:2,S")
	writeFile(t, old, []byte(strings.Repeat("x", 4000)))

	lmtp, d := w.lmtpd("lmtpd", "", w.ldapE2ESections(srv))
	pf := peerStartPostfix(t, lmtp, []string{"example.org"})

	id := peerID("ldap")
	rcpts := []string{"alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org", "nobody@example.org"}
	qid := peerSend(t, pf, id, peerMessage(id, "team@example.org", []byte("hello")), rcpts...)
	aliasID := peerID("ldap-alias")
	aliasQID := peerSend(t, pf, aliasID, peerMessage(aliasID, "a.smith@example.org", []byte("hello")), "a.smith@example.org")

	for _, r := range []string{"alice@example.org", "bob@example.org"} {
		key := peerSent(t, pf, qid, r)
		p, _ := peerOnlyCopy(t, w.ldapE2EMaildir(r), id)
		if filepath.Base(p) != key {
			t.Errorf("%s: stored %s, Postfix logged key %s", r, p, key)
		}
	}
	key := peerSent(t, pf, aliasQID, "a.smith@example.org")
	if p, _ := peerOnlyCopy(t, w.ldapE2EMaildir("a.smith@example.org"), aliasID); filepath.Base(p) != key {
		t.Errorf("alias: stored %s, Postfix logged key %s", p, key)
	}
	if c := peerCopies(t, peerMaildir(w.root, "a.smith@example.org"), aliasID); len(c) != 0 {
		t.Errorf("mail to the alias went to a Maildir of its own: %q", c)
	}

	for _, c := range []struct{ rcpt, dsn, reply string }{
		{"carol@example.org", `5\.2\.1`, `550 5\.2\.1 Mailbox disabled`},
		{"dave@example.org", `5\.2\.2`, `552 5\.2\.2 Mailbox full`},
		{"nobody@example.org", `5\.1\.1`, `550 5\.1\.1 User unknown`},
	} {
		pf.WaitLog(t, peerLine(qid, c.rcpt, `dsn=`+c.dsn+`, status=bounced \(host .* said: `+c.reply+
			` \(in reply to RCPT TO command\)\)`), 1, peerWait)
	}
	pf.WaitLog(t, qid+": removed", 1, peerWait)
	if f := peerFiles(t, peerMaildir(w.root, "carol@example.org")); len(f) != 0 {
		t.Errorf("disabled account got files: %q", f)
	}
	// The quota check recounted the mailbox (and wrote maildirsize);
	// no message was added.
	if f := append(peerFiles(t, filepath.Join(dave, "new")), peerFiles(t, filepath.Join(dave, "cur"))...); len(f) != 1 || f[0] != old {
		t.Errorf("over-quota mailbox holds %q, want only %s", f, old)
	}
	wantEmpty(t, filepath.Join(dave, "tmp"))
	if log := readFile(t, d.log); strings.Contains(string(log), "level=ERROR") {
		t.Errorf("lmtpd logged errors:\n%s", log)
	}
}

// TestLDAPE2EOutage: slapd is killed during a Postfix → LMTP run (with the
// lookup cache off, so that every recipient needs the directory): every
// recipient is deferred with a 4.x.x, nothing bounces, nothing is stored.
// slapd is started again on the same port with the same data, the queue
// is flushed, and each recipient gets the message exactly once.
func TestLDAPE2EOutage(t *testing.T) {
	t.Parallel()
	srv := ldapE2EStart(t)
	w := newPeerWorld(t)
	lmtp, d := w.lmtpd("lmtpd", "", w.ldapE2ESections(srv, "cache_size = 0"))
	pf := peerStartPostfix(t, lmtp, []string{"example.org"})

	// The directory works: the connection pool is filled.
	id0 := peerID("ldap-before")
	qid0 := peerSend(t, pf, id0, peerMessage(id0, "alice@example.org", []byte("before")), "alice@example.org")
	peerSent(t, pf, qid0, "alice@example.org")

	srv.Kill()
	id := peerID("ldap-outage")
	rcpts := []string{"alice@example.org", "bob@example.org", "erin@example.org"}
	qid := peerSend(t, pf, id, peerMessage(id, "team@example.org", []byte("during the outage")), rcpts...)
	for _, r := range rcpts {
		pf.WaitLog(t, peerLine(qid, r, `dsn=4\.\d+\.\d+, status=deferred \(host .* said: 451 4\.3\.0 user directory unavailable, try again later \(in reply to RCPT TO command\)\)`), 1, peerWait)
	}
	peerNoBounce(t, pf, qid)
	if n := peerCount(pf, qid+`: .*status=sent`); n != 0 {
		t.Fatalf("%d recipients reported sent while slapd was down", n)
	}
	for _, r := range rcpts {
		if c := peerCopies(t, w.ldapE2EMaildir(r), id); len(c) != 0 {
			t.Fatalf("%s: stored %q while slapd was down", r, c)
		}
	}

	srv.Restart(t)
	// nfsdrop leaves a failed server alone for up to retry_backoff (1s);
	// Postfix retries on its own as well, the flush only hurries it.
	time.Sleep(1100 * time.Millisecond)
	peerDeliveredOnce(t, pf, qid, id, w.ldapE2EMaildir, rcpts...)
	peerNoBounce(t, pf, qid)
	log := string(readFile(t, d.log))
	if !testenv.Contains(log, "ldap: server failed, skipping it for a while", "ldap: server answers again") {
		t.Errorf("lmtpd did not log the outage and the recovery:\n%s", log)
	}
}

// ldapE2EPoplib logs in with Python's poplib (USER/PASS), lists the
// mailbox when the login worked, and prints the outcome as JSON.
const ldapE2EPoplib = `
import json, poplib, sys, time
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {"ok": False, "list": [], "uidl": []}
p = poplib.POP3(host, port, timeout=30)
out["user"] = p.user(user).decode()
start = time.monotonic()
try:
    out["pass"] = p.pass_(pw).decode()
    out["ok"] = True
except poplib.error_proto as e:
    a = e.args[0]
    out["pass"] = a.decode() if isinstance(a, bytes) else str(a)
out["elapsed"] = time.monotonic() - start
if out["ok"]:
    out["list"] = [l.decode() for l in p.list()[1]]
    out["uidl"] = [l.decode() for l in p.uidl()[1]]
p.quit()
print(json.dumps(out))
`

type ldapE2ELogin struct {
	OK      bool     `json:"ok"`
	User    string   `json:"user"`
	Pass    string   `json:"pass"`
	Elapsed float64  `json:"elapsed"`
	List    []string `json:"list"`
	UIDL    []string `json:"uidl"`
}

func (l ldapE2ELogin) took() time.Duration { return time.Duration(l.Elapsed * float64(time.Second)) }

// TestLDAPE2EPOP3: POP3 logins checked by binding to slapd as the user,
// with Python's poplib: the right password gives +OK and the mailbox
// lists; a wrong one -ERR [AUTH] after auth_fail_delay; with slapd
// frozen (SIGSTOP), -ERR [SYS/TEMP] once the ldap timeout fires, without
// the auth_fail_delay, which only slows down password guessing. After
// SIGCONT logins work again.
func TestLDAPE2EPOP3(t *testing.T) {
	t.Parallel()
	py := testenv.Require(t, "python3", "python3")[0]
	srv := ldapE2EStart(t)
	w := newPeerWorld(t)
	const (
		timeout   = time.Second     // ldap.timeout in ldapE2ESections
		failDelay = 3 * time.Second // pop3.auth_fail_delay
	)
	pop := loopback(t)
	cfg := w.config("pop3d", w.ldapE2ESections(srv),
		peerLMTPSection(loopback(t), ""),
		fmt.Sprintf("[pop3]\nlisten = [%q]\ntrusted_networks = [\"127.0.0.0/8\"]\nauth_fail_delay = %q\n", "tcp:"+pop, failDelay.String()))

	// Two messages for alice, delivered by "nfsdrop deliver" with the same
	// configuration (a lookup in slapd).
	var ids []string
	for i := range 2 {
		id := peerID("ldap-pop3")
		ids = append(ids, id)
		r := w.run(peerMessage(id, "alice@example.org", []byte(strings.Repeat("pop3 ", 100*(i+1)))), nil,
			deliverArgs(cfg, "sender@remote.test", "alice@example.org")...)
		wantCode(t, r, exOK)
	}
	// Both are in the Maildir the directory names (nfsdropMailbox).
	box := w.ldapE2EMaildir("alice@example.org")
	sizes := map[string]bool{}
	for _, id := range ids {
		_, data := peerOnlyCopy(t, box, id)
		sizes[strconv.FormatInt(crlfSize(data), 10)] = true
	}

	d := w.startDaemon("pop3d", []string{pop}, "pop3d", "-c", cfg)
	login := func(user, pass string) ldapE2ELogin {
		t.Helper()
		out, errOut, code := runTool(t, nil, nil, py, "-c", ldapE2EPoplib, "127.0.0.1", portOf(t, pop), user, pass)
		if code != 0 {
			t.Fatalf("python3 exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		var l ldapE2ELogin
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Logf("login %s: %+v", user, l)
		return l
	}

	// The right password: +OK, and both messages listed with their sizes.
	l := login("alice@example.org", ldapE2EAlicePW)
	if !l.OK || !strings.HasPrefix(l.Pass, "+OK") {
		t.Fatalf("login with the right password: %q", l.Pass)
	}
	if len(l.List) != 2 || len(l.UIDL) != 2 {
		t.Fatalf("LIST %q, UIDL %q: want 2 messages", l.List, l.UIDL)
	}
	for _, line := range l.List {
		if f := strings.Fields(line); len(f) != 2 || !sizes[f[1]] {
			t.Errorf("LIST line %q: size is not one of the stored messages' %v", line, sizes)
		}
	}
	// Logging in with the bare name (default_domain) works too.
	if l := login("alice", ldapE2EAlicePW); !l.OK {
		t.Errorf("login as \"alice\": %q", l.Pass)
	}

	// A wrong password: [AUTH], after auth_fail_delay.
	l = login("alice@example.org", "wrong")
	if l.OK || !strings.HasPrefix(l.Pass, "-ERR [AUTH]") {
		t.Errorf("login with a wrong password: %q, want -ERR [AUTH]", l.Pass)
	}
	if l.took() < failDelay-100*time.Millisecond {
		t.Errorf("a wrong password was answered after %v, want auth_fail_delay %v", l.took(), failDelay)
	}

	// slapd frozen: the search on the pooled connection gets no answer;
	// the deadline (ldap.timeout) ends it and the login fails with
	// [SYS/TEMP], not [AUTH], and without auth_fail_delay.
	srv.Stop()
	l = login("alice@example.org", ldapE2EAlicePW)
	srv.Cont()
	if l.OK || !strings.HasPrefix(l.Pass, "-ERR [SYS/TEMP]") {
		t.Errorf("login with slapd frozen: %q, want -ERR [SYS/TEMP]", l.Pass)
	}
	if took := l.took(); took < timeout-100*time.Millisecond || took >= timeout+failDelay-500*time.Millisecond {
		t.Errorf("login with slapd frozen answered after %v, want about ldap.timeout (%v) and no auth_fail_delay (%v)", took, timeout, failDelay)
	}
	log := string(readFile(t, d.log))
	if !regexp.MustCompile(`msg="pop3 login failed".*kind=temporary`).MatchString(log) {
		t.Errorf("pop3d did not log a temporary login failure:\n%s", log)
	}

	// Thawed: after the back-off (retry_backoff 1s), logins work again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l = login("alice@example.org", ldapE2EAlicePW)
		if l.OK {
			break
		}
		if !strings.HasPrefix(l.Pass, "-ERR [SYS/TEMP]") || time.Now().After(deadline) {
			t.Fatalf("login after SIGCONT: %q", l.Pass)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(l.List) != 2 {
		t.Errorf("after SIGCONT: LIST %q, want 2 messages", l.List)
	}
}
