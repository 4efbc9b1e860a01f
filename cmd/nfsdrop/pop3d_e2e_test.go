package main

// End-to-end tests of `nfsdrop pop3d` (and `serve --dev`): the built binary
// against real POP3 clients (Python's poplib, curl, fetchmail, openssl
// s_client), mail delivered by `nfsdrop lmtp-send` to a running
// `nfsdrop lmtpd` or by `nfsdrop deliver`, everything on 127.0.0.1. The
// multi-host test runs two pop3d processes with different hostnames on one
// mail root while mail keeps arriving, and kills one in mid-session.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/store"
)

// pop3TestMessages are three messages for alice: one over LMTP (CRLF, with
// lines that need dot-stuffing, one of them a lone "."), one with bare LF
// line ends and none after its last line, and one large enough to cross
// every buffer of the server.
func pop3TestMessages() (lmtp, bareLF, large []byte) {
	lmtp = []byte("From: Sender <sender@example.net>\r\nTo: alice@example.test\r\nSubject: one\r\n" +
		"Message-ID: <one@example.net>\r\n\r\n.leading dot\r\n.\r\n..two dots\r\nend of one\r\n")
	bareLF = []byte("From: Sender <sender@example.net>\nTo: alice@example.test\nSubject: two\n" +
		"Message-ID: <two@example.net>\n\nbare LF body\n.\n.dot line\nno line end")
	var b bytes.Buffer
	b.WriteString("From: Sender <sender@example.net>\r\nTo: alice@example.test\r\nSubject: three\r\n" +
		"Message-ID: <three@example.net>\r\n\r\n")
	for i := 0; b.Len() < 300<<10; i++ {
		if i%97 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "line %06d %s\r\n", i, strings.Repeat("abcdefghij", i%13))
	}
	return lmtp, bareLF, b.Bytes()
}

// deliverPOP3Messages puts the three test messages into alice's Maildir:
// the first through lmtpd (at lmtpAddr), the others with deliver. It
// returns the stored files by UIDL.
func deliverPOP3Messages(e *e2e, lmtpAddr string) map[string][]byte {
	e.t.Helper()
	m1, m2, m3 := pop3TestMessages()
	e.lmtpSend(lmtpAddr, pop3User, m1)
	for _, m := range [][]byte{m2, m3} {
		wantCode(e.t, e.deliver(m, "sender@example.net", pop3User), 0)
	}
	stored := storedMessages(e.t, e.pop3Maildir("alice"))
	if len(stored) != 3 {
		e.t.Fatalf("alice has %d messages, want 3", len(stored))
	}
	return stored
}

// headerEnd returns data up to and including the first empty line, plus n
// more lines.
func headerEnd(data []byte, n int) []byte {
	i := bytes.Index(data, []byte("\r\n\r\n"))
	if i < 0 {
		return data
	}
	end := i + 4
	for ; n > 0; n-- {
		j := bytes.Index(data[end:], []byte("\r\n"))
		if j < 0 {
			return data
		}
		end += j + 2
	}
	return data[:end]
}

const poplibScript = `
import base64, json, poplib, ssl, sys

host = "127.0.0.1"
plain, tlsport, user, pw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl._create_unverified_context()
out = {}

def text(b):
    return b.decode() if isinstance(b, bytes) else str(b)

def attempt(f, *a):
    try:
        return text(f(*a))
    except poplib.error_proto as e:
        return text(e.args[0])

def joined(lines):
    return base64.b64encode(b"".join(l + b"\r\n" for l in lines)).decode()

p = poplib.POP3(host, plain, timeout=30)
out["greeting"] = text(p.getwelcome())
out["capa_plain"] = sorted(p.capa())
out["user_plain"] = attempt(p.user, user)
out["pass_plain"] = attempt(p.pass_, pw)
out["apop_client"] = attempt(p.apop, user, pw)
out["apop_raw"] = attempt(p._shortcmd, "APOP %s 0123456789abcdef0123456789abcdef" % user)
out["stls"] = text(p.stls(context=ctx))
out["capa_tls"] = sorted(p.capa())
out["user"] = text(p.user(user))
out["pass"] = text(p.pass_(pw))
out["capa_trans"] = sorted(p.capa())
out["stat"] = list(p.stat())
out["list"] = [text(l) for l in p.list()[1]]
out["uidl"] = [text(l) for l in p.uidl()[1]]
msgs = []
for i in range(1, out["stat"][0] + 1):
    resp, lines, octets = p.retr(i)
    msgs.append({
        "resp": text(resp), "octets": octets, "body": joined(lines),
        "top0": joined(p.top(i, 0)[1]), "top1": joined(p.top(i, 1)[1]),
        "uidl": text(p.uidl(i)), "list": text(p.list(i)),
    })
out["msgs"] = msgs
out["dele"] = text(p.dele(1))
out["dele_again"] = attempt(p.dele, 1)
out["stat_after_dele"] = list(p.stat())
out["quit"] = text(p.quit())

s = poplib.POP3_SSL(host, tlsport, context=ctx, timeout=30)
out["ssl_greeting"] = text(s.getwelcome())
out["ssl_capa"] = sorted(s.capa())
out["ssl_user"] = text(s.user(user))
out["ssl_pass"] = text(s.pass_(pw))
out["ssl_stat"] = list(s.stat())
out["ssl_uidl"] = [text(l) for l in s.uidl()[1]]
out["ssl_quit"] = text(s.quit())
print(json.dumps(out))
`

type poplibResult struct {
	Greeting, UserPlain, PassPlain, ApopClient, ApopRaw, STLS string
	CapaPlain, CapaTLS, CapaTrans                             []string
	User, Pass                                                string
	Stat                                                      []int64
	List, UIDL                                                []string
	Msgs                                                      []struct {
		Resp, Body, Top0, Top1, UIDL, List string
		Octets                             int64
	}
	Dele, DeleAgain string
	StatAfterDele   []int64
	Quit            string
	SSLGreeting     string
	SSLCapa         []string
	SSLUser         string
	SSLPass         string
	SSLStat         []int64
	SSLUIDL         []string
	SSLQuit         string
}

func (r *poplibResult) UnmarshalJSON(b []byte) error {
	// The script's keys are snake_case; map them onto the fields.
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	fields := map[string]any{
		"greeting": &r.Greeting, "user_plain": &r.UserPlain, "pass_plain": &r.PassPlain,
		"apop_client": &r.ApopClient, "apop_raw": &r.ApopRaw, "stls": &r.STLS,
		"capa_plain": &r.CapaPlain, "capa_tls": &r.CapaTLS, "capa_trans": &r.CapaTrans,
		"user": &r.User, "pass": &r.Pass, "stat": &r.Stat, "list": &r.List, "uidl": &r.UIDL,
		"msgs": &r.Msgs, "dele": &r.Dele, "dele_again": &r.DeleAgain,
		"stat_after_dele": &r.StatAfterDele, "quit": &r.Quit,
		"ssl_greeting": &r.SSLGreeting, "ssl_capa": &r.SSLCapa, "ssl_user": &r.SSLUser,
		"ssl_pass": &r.SSLPass, "ssl_stat": &r.SSLStat, "ssl_uidl": &r.SSLUIDL, "ssl_quit": &r.SSLQuit,
	}
	for k, raw := range m {
		p, ok := fields[k]
		if !ok {
			return fmt.Errorf("unexpected key %q", k)
		}
		if err := json.Unmarshal(raw, p); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// TestPOP3E2EPoplib drives pop3d with Python's poplib: plaintext refused on
// a connection without TLS from an untrusted address, STLS, login, STAT,
// LIST, UIDL, RETR, TOP, DELE, QUIT, then POP3_SSL on the implicit-TLS
// listener; no APOP anywhere.
func TestPOP3E2EPoplib(t *testing.T) {
	t.Parallel()
	py := testenv.Require(t, "python3", "python3")[0]
	// 127.0.0.1 is not trusted and plaintext is not allowed: passwords
	// only inside TLS.
	w := startTLSPOP3(t, nil)
	e, plain, implicit, stored := w.e2e, w.plain, w.implicit, w.stored

	stdout, stderr, code := runTool(t, nil, nil, py, "-c", poplibScript, portOf(t, plain), portOf(t, implicit), pop3User, pop3Pass)
	if code != 0 {
		t.Fatalf("python3 exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	var r poplibResult
	if err := json.Unmarshal(stdout, &r); err != nil {
		t.Fatalf("%v\n%s\n%s", err, stdout, stderr)
	}

	// Greeting and capabilities: no APOP (no <timestamp>, no capability),
	// no password mechanisms before TLS, STLS offered.
	for _, g := range []string{r.Greeting, r.SSLGreeting} {
		if !strings.HasPrefix(g, "+OK mx1.test ") || regexp.MustCompile(`<[^>]*>`).MatchString(g) {
			t.Errorf("greeting %q: want +OK mx1.test ... without an APOP <timestamp>", g)
		}
	}
	for name, capa := range map[string][]string{"plain": r.CapaPlain, "after STLS": r.CapaTLS, "logged in": r.CapaTrans, "POP3S": r.SSLCapa} {
		if slices.Contains(capa, "APOP") {
			t.Errorf("CAPA (%s) %q offers APOP", name, capa)
		}
		for _, c := range []string{"TOP", "UIDL", "RESP-CODES", "PIPELINING"} {
			if !slices.Contains(capa, c) {
				t.Errorf("CAPA (%s) %q lacks %s", name, capa, c)
			}
		}
	}
	if slices.Contains(r.CapaPlain, "USER") || slices.Contains(r.CapaPlain, "SASL") || !slices.Contains(r.CapaPlain, "STLS") {
		t.Errorf("CAPA without TLS %q: want STLS and neither USER nor SASL", r.CapaPlain)
	}
	for name, capa := range map[string][]string{"after STLS": r.CapaTLS, "POP3S": r.SSLCapa} {
		if !slices.Contains(capa, "USER") || !slices.Contains(capa, "SASL") || slices.Contains(capa, "STLS") {
			t.Errorf("CAPA (%s) %q: want USER and SASL, no STLS", name, capa)
		}
	}
	if !strings.HasPrefix(r.ApopClient, "-ERR") || !strings.HasPrefix(r.ApopRaw, "-ERR") {
		t.Errorf("APOP: poplib says %q, server says %q; want both -ERR", r.ApopClient, r.ApopRaw)
	}
	for name, got := range map[string]string{"USER": r.UserPlain, "PASS": r.PassPlain} {
		if !strings.HasPrefix(got, "-ERR [AUTH] ") || !strings.Contains(got, "STLS") {
			t.Errorf("%s without TLS from an untrusted address: %q, want -ERR [AUTH] ... use STLS", name, got)
		}
	}
	for name, got := range map[string]string{"STLS": r.STLS, "USER": r.User, "PASS": r.Pass, "POP3S USER": r.SSLUser, "POP3S PASS": r.SSLPass} {
		if !strings.HasPrefix(got, "+OK") {
			t.Errorf("%s: %q", name, got)
		}
	}

	// The listing against the Maildir: UIDL is the base name, LIST the
	// size with CRLF line ends, RETR the bytes with CRLF line ends.
	var total int64
	for _, data := range stored {
		total += int64(len(pop3Wire(data)))
	}
	if len(r.Stat) != 2 || r.Stat[0] != 3 || r.Stat[1] != total {
		t.Errorf("STAT %v, want [3 %d]", r.Stat, total)
	}
	if len(r.List) != 3 || len(r.UIDL) != 3 || len(r.Msgs) != 3 {
		t.Fatalf("LIST %q, UIDL %q, %d messages retrieved: want 3 each", r.List, r.UIDL, len(r.Msgs))
	}
	uidls := make([]string, 3)
	for i, m := range r.Msgs {
		n := strconv.Itoa(i + 1)
		f := strings.Fields(r.UIDL[i])
		if len(f) != 2 || f[0] != n {
			t.Fatalf("UIDL line %q", r.UIDL[i])
		}
		uidl := f[1]
		uidls[i] = uidl
		data, ok := stored[uidl]
		if !ok {
			t.Errorf("message %s: UIDL %q is no base name in the Maildir", n, uidl)
			continue
		}
		want := pop3Wire(data)
		size := strconv.Itoa(len(want))
		if r.List[i] != n+" "+size {
			t.Errorf("LIST line %q, want %q", r.List[i], n+" "+size)
		}
		if m.List != "+OK "+n+" "+size || m.UIDL != "+OK "+n+" "+uidl {
			t.Errorf("LIST %s = %q, UIDL %s = %q", n, m.List, n, m.UIDL)
		}
		if m.Resp != "+OK "+size+" octets" {
			t.Errorf("RETR %s: %q", n, m.Resp)
		}
		if m.Octets != int64(len(want)) {
			t.Errorf("RETR %s: %d octets (dot-unstuffed, CRLF included), LIST says %d", n, m.Octets, len(want))
		}
		for name, c := range map[string]struct {
			b64  string
			want []byte
		}{"RETR": {m.Body, want}, "TOP 0": {m.Top0, headerEnd(want, 0)}, "TOP 1": {m.Top1, headerEnd(want, 1)}} {
			got, err := base64.StdEncoding.DecodeString(c.b64)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.want) {
				t.Errorf("%s %s: %d bytes differ from the stored message with CRLF line ends (%d bytes)\n got %.300q\nwant %.300q",
					name, n, len(got), len(c.want), got, c.want)
			}
		}
	}

	// DELE 1, QUIT: gone from the Maildir and from the POP3S session.
	if !strings.HasPrefix(r.Dele, "+OK") || !strings.HasPrefix(r.DeleAgain, "-ERR") {
		t.Errorf("DELE 1 = %q, again = %q", r.Dele, r.DeleAgain)
	}
	if want := total - int64(len(pop3Wire(stored[uidls[0]]))); len(r.StatAfterDele) != 2 || r.StatAfterDele[0] != 2 || r.StatAfterDele[1] != want {
		t.Errorf("STAT after DELE %v, want [2 %d]", r.StatAfterDele, want)
	}
	if !strings.HasPrefix(r.Quit, "+OK") || !strings.Contains(r.Quit, "1 messages deleted") {
		t.Errorf("QUIT: %q", r.Quit)
	}
	if len(r.SSLStat) != 2 || r.SSLStat[0] != 2 {
		t.Errorf("POP3S STAT %v, want 2 messages", r.SSLStat)
	}
	wantUIDL := []string{"1 " + uidls[1], "2 " + uidls[2]}
	if !slices.Equal(r.SSLUIDL, wantUIDL) {
		t.Errorf("POP3S UIDL %q, want %q", r.SSLUIDL, wantUIDL)
	}
	if !strings.HasPrefix(r.SSLQuit, "+OK") {
		t.Errorf("POP3S QUIT: %q", r.SSLQuit)
	}
	left := storedMessages(t, e.pop3Maildir("alice"))
	if _, ok := left[uidls[0]]; ok || len(left) != 2 {
		t.Errorf("Maildir after DELE 1 holds %d messages (deleted one still there: %v)", len(left), ok)
	}
}

// TestPOP3E2ECurl fetches with curl: LIST, RETR, DELE (-X DELE -I),
// pop3s:// on the implicit-TLS listener, --ssl-reqd (STLS) on the plain
// one, and a refused login.
func TestPOP3E2ECurl(t *testing.T) {
	t.Parallel()
	curl := testenv.Require(t, "curl", "curl")[0]
	// Loopback is trusted: curl may log in without TLS.
	w := startTLSPOP3(t, func(c *pop3Conf) { c.trusted = []string{"127.0.0.0/8"}; c.authFailDelay = "0s" })
	e, plain, implicit, stored := w.e2e, w.plain, w.implicit, w.stored

	run := func(args ...string) ([]byte, string) {
		t.Helper()
		args = append([]string{"--silent", "--show-error", "--max-time", "30"}, args...)
		out, errOut, code := runTool(t, nil, nil, curl, args...)
		if code != 0 {
			t.Fatalf("curl %q: exit %d\n%s", args, code, errOut)
		}
		return out, string(errOut)
	}
	auth := []string{"--user", pop3User + ":" + pop3Pass}

	// The listing, in delivery order, names the stored messages.
	out, _ := run("pop3://alice%40example.test:pw@" + plain + "/")
	lines := strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n")
	if len(lines) != 3 {
		t.Fatalf("curl LIST: %q", out)
	}
	sizes := make(map[int64]int)
	for _, data := range stored {
		sizes[int64(len(pop3Wire(data)))]++
	}
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("curl LIST line %q", l)
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		if f[0] != strconv.Itoa(i+1) || sizes[n] == 0 {
			t.Errorf("curl LIST line %q: not a message number and a stored size (%v)", l, sizes)
		}
	}

	// UIDLs in order, from the raw protocol (curl -X UIDL).
	out, _ = run(append(auth, "-X", "UIDL", "pop3://"+plain+"/")...)
	var order []string
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("curl UIDL line %q", l)
		}
		order = append(order, f[1])
	}
	if len(order) != 3 {
		t.Fatalf("curl UIDL: %q", out)
	}

	// RETR over each kind of connection: bytes are the stored message with
	// CRLF line ends (curl removes the dot-stuffing).
	for i, c := range []struct {
		name string
		args []string
	}{
		{"plain", []string{"pop3://" + plain + "/1"}},
		{"pop3s", []string{"--insecure", "pop3s://" + implicit + "/2"}},
		{"STLS", []string{"--ssl-reqd", "--insecure", "-v", "pop3://" + plain + "/3"}},
	} {
		out, verbose := run(append(slices.Clone(auth), c.args...)...)
		if want := pop3Wire(stored[order[i]]); !bytes.Equal(out, want) {
			t.Errorf("curl RETR %d (%s): %d bytes, want the stored %d\n got %.300q\nwant %.300q", i+1, c.name, len(out), len(want), out, want)
		}
		if c.name == "STLS" && !testenv.Contains(verbose, "> STLS", "+OK Begin TLS negotiation") {
			t.Errorf("curl --ssl-reqd did not use STLS:\n%s", verbose)
		}
	}

	// DELE: curl sends DELE 1 and QUIT; the file is gone.
	run(append(auth, "-X", "DELE", "-I", "pop3://"+plain+"/1")...)
	left := storedMessages(t, e.pop3Maildir("alice"))
	if _, ok := left[order[0]]; ok || len(left) != 2 {
		t.Errorf("after curl -X DELE: %d messages left, deleted one still there: %v", len(left), ok)
	}
	out, _ = run(append(auth, "--insecure", "pop3s://"+implicit+"/")...)
	if n := strings.Count(string(out), "\r\n"); n != 2 {
		t.Errorf("curl LIST after DELE: %q, want 2 messages", out)
	}

	// A wrong password: curl's "login denied".
	_, errOut, code := runTool(t, nil, nil, curl, "--silent", "--max-time", "30", "--user", pop3User+":wrong", "pop3://"+plain+"/")
	if code != 67 {
		t.Errorf("curl with a wrong password: exit %d, want 67 (login denied)\n%s", code, errOut)
	}
}

// TestPOP3E2EFetchmail fetches with fetchmail through an MDA that writes
// each message to a file: first over STLS keeping the mail, then over
// implicit TLS deleting it, then once more finding nothing (exit 1).
func TestPOP3E2EFetchmail(t *testing.T) {
	t.Parallel()
	fetchmail := testenv.Require(t, "fetchmail", "fetchmail")[0]
	w := startTLSPOP3(t, nil)
	e, plain, implicit, stored := w.e2e, w.plain, w.implicit, w.stored
	maildir := e.pop3Maildir("alice")

	home := filepath.Join(e.dir, "fetchmail-home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	// fetch runs fetchmail once; want is the exit code expected.
	fetch := func(name, port, tls string, keep bool, want int) (captured [][]byte, log string) {
		t.Helper()
		out := filepath.Join(e.dir, "fetched-"+name)
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		keepOpt := "nokeep"
		if keep {
			keepOpt = "keep"
		}
		rc := fmt.Sprintf("set no bouncemail\npoll 127.0.0.1 proto pop3 port %s timeout 30\n"+
			"  user %q there with password %q\n  %s no sslcertck fetchall %s\n  mda \"cat > $(mktemp %s/msg.XXXXXX)\"\n",
			port, pop3User, pop3Pass, tls, keepOpt, out)
		rcPath := filepath.Join(home, "rc-"+name)
		if err := os.WriteFile(rcPath, []byte(rc), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := runTool(t, nil, []string{"HOME=" + home, "FETCHMAILHOME=" + home},
			fetchmail, "--nodetach", "--nosyslog", "--invisible", "-v", "-f", rcPath)
		log = string(stdout) + string(stderr)
		if code != want {
			t.Fatalf("fetchmail (%s): exit %d, want %d\n%s", name, code, want, log)
		}
		for _, n := range names(t, out) {
			captured = append(captured, readFile(t, filepath.Join(out, n)))
		}
		return captured, log
	}
	// What fetchmail hands its MDA: the message with LF line ends.
	want := make(map[string]bool)
	for _, data := range stored {
		want[string(bytes.ReplaceAll(pop3Wire(data), []byte("\r\n"), []byte("\n")))] = true
	}
	check := func(name string, got [][]byte) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("fetchmail (%s) captured %d messages, want %d", name, len(got), len(want))
		}
		for _, g := range got {
			if !want[string(g)] {
				t.Errorf("fetchmail (%s) captured a message that is none of the stored ones:\n%.500q", name, g)
			}
		}
	}

	got, log := fetch("stls", portOf(t, plain), "sslproto 'tls1.2+'", true, 0)
	if !strings.Contains(log, "POP3> STLS") {
		t.Errorf("fetchmail with sslproto on the plain port did not use STLS:\n%s", log)
	}
	check("stls, keep", got)
	if n := len(storedMessages(t, maildir)); n != 3 {
		t.Errorf("after fetchmail with keep, the Maildir holds %d messages, want 3", n)
	}

	got, _ = fetch("ssl", portOf(t, implicit), "ssl", false, 0)
	check("ssl, nokeep", got)
	if n := len(storedMessages(t, maildir)); n != 0 {
		t.Errorf("after fetchmail without keep, the Maildir holds %d messages, want 0", n)
	}

	// Exit 1: no mail.
	if got, _ = fetch("again", portOf(t, implicit), "ssl", false, 1); len(got) != 0 {
		t.Errorf("fetchmail on an empty mailbox captured %d messages", len(got))
	}
}

// TestPOP3E2EOpenSSL runs a session through `openssl s_client -starttls
// pop3` (CAPA, USER, PASS, STAT, QUIT), and checks that stls = false
// withdraws STLS where implicit TLS is still served.
func TestPOP3E2EOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testenv.Require(t, "openssl", "openssl")[0]
	w := startTLSPOP3(t, nil)
	e, plain, stored := w.e2e, w.plain, w.stored
	var total int
	for _, data := range stored {
		total += len(pop3Wire(data))
	}

	session := "CAPA\nUSER " + pop3User + "\nPASS " + pop3Pass + "\nSTAT\nQUIT\n"
	stdout, stderr, code := runTool(t, []byte(session), nil, openssl, "s_client", "-starttls", "pop3",
		"-connect", plain, "-quiet", "-crlf")
	if code != 0 {
		t.Fatalf("openssl s_client: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var replies []string
	var capa []string
	inCapa := false
	for _, l := range strings.Split(strings.TrimSuffix(string(stdout), "\r\n"), "\r\n") {
		switch {
		case inCapa && l == ".":
			inCapa = false
		case inCapa:
			capa = append(capa, l)
		default:
			replies = append(replies, l)
			inCapa = len(replies) == 1
		}
	}
	if len(replies) != 5 {
		t.Fatalf("openssl s_client got %d replies, want 5 (CAPA, USER, PASS, STAT, QUIT):\n%s\n%s", len(replies), stdout, stderr)
	}
	for i, r := range replies {
		if !strings.HasPrefix(r, "+OK") {
			t.Errorf("reply %d: %q", i+1, r)
		}
	}
	if !slices.Contains(capa, "USER") || slices.Contains(capa, "STLS") {
		t.Errorf("CAPA inside TLS %q: want USER, no STLS", capa)
	}
	if want := fmt.Sprintf("+OK 3 %d", total); replies[3] != want {
		t.Errorf("STAT: %q, want %q", replies[3], want)
	}

	// stls = false: the plain listener does not offer STLS (and refuses
	// it), implicit TLS still works.
	plain2, implicit2 := loopback(t), loopback(t)
	cfg2 := e.writePOP3Config("nostls", pop3Conf{hostname: "mx2.test", listen: plain2, listenTLS: implicit2,
		cert: w.cert, key: w.key, stls: false, trusted: []string{"127.0.0.0/8"}})
	e.startDaemon("pop3d-nostls", []string{plain2, implicit2}, "pop3d", "-c", cfg2)
	p := dialPOP3(t, plain2)
	if capa := p.multi("CAPA"); slices.Contains(capa, "STLS") {
		t.Errorf("stls = false, but CAPA offers STLS: %q", capa)
	}
	if r := p.cmd("STLS"); !strings.HasPrefix(r, "-ERR") {
		t.Errorf("stls = false, but STLS answers %q", r)
	}
	p.quit()
	_, _, code = runTool(t, []byte("QUIT\n"), nil, openssl, "s_client", "-connect", implicit2, "-quiet", "-crlf")
	if code != 0 {
		t.Errorf("openssl s_client on the implicit-TLS listener with stls = false: exit %d", code)
	}
}

// twoHostMessage is a message with a Message-ID the test can follow.
func twoHostMessage(id string) []byte {
	return []byte("From: Sender <sender@example.net>\r\nTo: alice@example.test\r\nSubject: " + id +
		"\r\nMessage-ID: <" + id + "@example.net>\r\n\r\nbody of " + id + "\r\n")
}

// uidlBook checks that a message (by Message-ID) has one UIDL and one size
// in every session on every host, and that no two messages share a UIDL.
type uidlBook struct {
	t      *testing.T
	byID   map[string]popMsg
	byUIDL map[string]string
}

func (b *uidlBook) check(where string, msgs []popMsg) {
	b.t.Helper()
	for _, m := range msgs {
		if prev, ok := b.byID[m.id]; ok && (prev.uidl != m.uidl || prev.size != m.size) {
			b.t.Errorf("%s: %s has UIDL %s size %d, earlier UIDL %s size %d", where, m.id, m.uidl, m.size, prev.uidl, prev.size)
		}
		if id, ok := b.byUIDL[m.uidl]; ok && id != m.id {
			b.t.Errorf("%s: UIDL %s names %s and %s", where, m.uidl, id, m.id)
		}
		b.byID[m.id], b.byUIDL[m.uidl] = m, m.id
	}
}

func ids(msgs []popMsg) map[string]bool {
	out := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		out[m.id] = true
	}
	return out
}

// TestPOP3E2ETwoHosts runs two pop3d processes with different hostnames on
// one mail root while lmtpd keeps delivering: one session per mailbox
// across hosts ([IN-USE]), deletions seen by both hosts, a pop3d killed
// with SIGKILL in mid-session deletes nothing and its lock is taken over
// once it is lock_stale old, and every message has the same UIDL
// everywhere.
func TestPOP3E2ETwoHosts(t *testing.T) {
	t.Parallel()
	e := newPOP3World(t)
	lmtpAddr, pop1, pop2 := loopback(t), loopback(t), loopback(t)
	loop := []string{"127.0.0.0/8"}
	cfg1 := e.writePOP3Config("mx1", pop3Conf{hostname: "mx1.test", lmtp: lmtpAddr, listen: pop1, trusted: loop, lockStale: "30s"})
	cfg2 := e.writePOP3Config("mx2", pop3Conf{hostname: "mx2.test", listen: pop2, trusted: loop, lockStale: "30s"})
	e.startDaemon("lmtpd", []string{lmtpAddr}, "lmtpd", "-c", cfg1)
	mx1 := e.startDaemon("pop3d-mx1", []string{pop1}, "pop3d", "-c", cfg1)
	e.startDaemon("pop3d-mx2", []string{pop2}, "pop3d", "-c", cfg2)
	maildir := e.pop3Maildir("alice")
	lockPath := filepath.Join(maildir, store.LockName)

	var accepted []string // Message-IDs lmtpd accepted
	for i := range 6 {
		id := fmt.Sprintf("pre-%d", i)
		e.lmtpSend(lmtpAddr, pop3User, twoHostMessage(id))
		accepted = append(accepted, "<"+id+"@example.net>")
	}

	// Deliveries go on in the background until the end.
	var (
		mu      sync.Mutex
		bgErrs  []string
		stopBg  = make(chan struct{})
		bgDone  = make(chan struct{})
		stopped bool
	)
	go func() {
		defer close(bgDone)
		for i := 0; ; i++ {
			select {
			case <-stopBg:
				return
			case <-time.After(100 * time.Millisecond):
			}
			id := fmt.Sprintf("bg-%d", i)
			file := filepath.Join(e.dir, id+".eml")
			if err := os.WriteFile(file, twoHostMessage(id), 0o644); err != nil {
				mu.Lock()
				bgErrs = append(bgErrs, err.Error())
				mu.Unlock()
				return
			}
			out, err := exec.Command(e.bin, lmtpSendArgs(lmtpAddr, pop3User, file)...).CombinedOutput()
			mu.Lock()
			if err != nil || !strings.Contains(string(out), ": 250") {
				bgErrs = append(bgErrs, fmt.Sprintf("%s: %v: %s", id, err, out))
			} else {
				accepted = append(accepted, "<"+id+"@example.net>")
			}
			mu.Unlock()
		}
	}()
	stopDeliveries := func() {
		if !stopped {
			stopped = true
			close(stopBg)
			<-bgDone
		}
	}
	t.Cleanup(stopDeliveries)

	book := &uidlBook{t: t, byID: make(map[string]popMsg), byUIDL: make(map[string]string)}
	session := func(name, addr string) (*popClient, []popMsg) {
		t.Helper()
		p := dialPOP3(t, addr)
		p.mustLogin(pop3User, pop3Pass)
		msgs := p.listing()
		book.check(name, msgs)
		return p, msgs
	}
	wantInUse := func(name, addr string) {
		t.Helper()
		p := dialPOP3(t, addr)
		if r := p.login(pop3User, pop3Pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
			t.Errorf("%s: login while another session holds the mailbox: %q, want -ERR [IN-USE]", name, r)
		}
		p.quit()
	}

	// mx2 lists first (and caches its listing).
	p, first := session("mx2 first", pop2)
	if len(first) < 6 {
		t.Fatalf("mx2 lists %d messages, want at least 6", len(first))
	}
	if r := p.quit(); !strings.HasPrefix(r, "+OK mx2.test ") {
		t.Errorf("QUIT on mx2: %q", r)
	}

	// A session on mx1 holds the mailbox against mx2 and against mx1.
	a, listA := session("mx1 A", pop1)
	if !strings.HasPrefix(a.greeting, "+OK mx1.test ") {
		t.Errorf("mx1 greeting %q", a.greeting)
	}
	// The lock is a symlink whose target names its holder.
	if lock, err := os.Readlink(lockPath); err != nil || !testenv.Contains(lock, pop3User, "mx1.test") {
		t.Errorf("lock %q (%v) does not name the user and mx1.test", lock, err)
	}
	wantInUse("mx2 during A", pop2)
	wantInUse("mx1 during A", pop1)
	for _, n := range []string{"1", "2"} {
		if r := a.cmd("DELE " + n); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("DELE %s: %q", n, r)
		}
	}
	if r := a.quit(); !strings.Contains(r, "(2 messages deleted)") {
		t.Fatalf("QUIT after DELE 1, DELE 2: %q", r)
	}
	deleted := map[string]bool{listA[0].id: true, listA[1].id: true}
	onDisk := storedMessages(t, maildir)
	for _, m := range listA[:2] {
		if _, ok := onDisk[m.uidl]; ok {
			t.Errorf("deleted message %s (%s) is still in the Maildir", m.id, m.uidl)
		}
	}

	// Both hosts, in turn, list everything A left and nothing it deleted.
	for _, h := range []struct{ name, addr string }{{"mx2 after A", pop2}, {"mx1 after A", pop1}, {"mx2 again", pop2}} {
		p, msgs := session(h.name, h.addr)
		got := ids(msgs)
		for id := range deleted {
			if got[id] {
				t.Errorf("%s lists %s, deleted by A", h.name, id)
			}
		}
		for _, m := range listA[2:] {
			if !got[m.id] {
				t.Errorf("%s does not list %s", h.name, m.id)
			}
		}
		if r := p.quit(); !strings.Contains(r, "(0 messages deleted)") {
			t.Errorf("%s QUIT: %q", h.name, r)
		}
	}

	// Session K on mx1 deletes two messages, then mx1 dies before QUIT.
	k, listK := session("mx1 K", pop1)
	for _, n := range []string{"1", "2"} {
		if r := k.cmd("DELE " + n); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("DELE %s: %q", n, r)
		}
	}
	mx1.kill9()
	info, err := os.Lstat(lockPath)
	if err != nil {
		t.Fatalf("the killed session's lock: %v", err)
	}
	lockTime := info.ModTime()
	onDisk = storedMessages(t, maildir)
	for _, m := range listK[:2] {
		if _, ok := onDisk[m.uidl]; !ok {
			t.Errorf("%s (%s), marked deleted by a session that never sent QUIT, is gone", m.id, m.uidl)
		}
	}

	// mx2 is refused until the lock is lock_stale (30s) old, then takes
	// it over.
	var took *popClient
	for took == nil {
		p := dialPOP3(t, pop2)
		r := p.login(pop3User, pop3Pass)
		age := time.Since(lockTime)
		switch {
		case strings.HasPrefix(r, "+OK"):
			if age < 29*time.Second {
				t.Fatalf("mx2 took over a lock %v old (lock_stale is 30s)", age.Round(time.Millisecond))
			}
			took = p
		case !strings.HasPrefix(r, "-ERR [IN-USE]"):
			t.Fatalf("mx2 login with a stale lock %v old: %q", age.Round(time.Millisecond), r)
		case age > 34*time.Second:
			t.Fatalf("mx2 still refused with a lock %v old (lock_stale is 30s): %q", age.Round(time.Millisecond), r)
		default:
			p.quit()
			time.Sleep(time.Second)
		}
	}
	t.Logf("mx2 took over the lock %v after its last refresh", time.Since(lockTime).Round(time.Millisecond))
	msgs := took.listing()
	book.check("mx2 after takeover", msgs)
	got := ids(msgs)
	for _, m := range listK {
		if !got[m.id] {
			t.Errorf("after mx1 was killed, mx2 does not list %s (%s)", m.id, m.uidl)
		}
	}
	if r := took.quit(); !strings.HasPrefix(r, "+OK") {
		t.Errorf("QUIT after takeover: %q", r)
	}

	// Deliveries stop; a new mx1 and mx2 list the same: every accepted
	// message but the two A deleted, with the same UIDLs.
	stopDeliveries()
	mu.Lock()
	if len(bgErrs) > 0 {
		t.Errorf("background deliveries failed: %q", bgErrs)
	}
	want := make(map[string]bool)
	for _, id := range accepted {
		if !deleted[id] {
			want[id] = true
		}
	}
	bg := len(accepted) - 6
	mu.Unlock()
	if bg < 20 {
		t.Errorf("only %d background deliveries went through", bg)
	}
	t.Logf("%d messages delivered in the background during the sessions", bg)
	e.startDaemon("pop3d-mx1-again", []string{pop1}, "pop3d", "-c", cfg1)
	var final [][]popMsg
	for _, h := range []struct{ name, addr string }{{"new mx1 at the end", pop1}, {"mx2 at the end", pop2}} {
		p, msgs := session(h.name, h.addr)
		if got := ids(msgs); !maps.Equal(got, want) {
			t.Errorf("%s lists %d messages, want the %d accepted and not deleted", h.name, len(got), len(want))
		}
		p.quit()
		final = append(final, msgs)
	}
	if !slices.Equal(final[0], final[1]) {
		t.Errorf("mx1 and mx2 list differently at the end")
	}
	onDisk = storedMessages(t, maildir)
	if len(onDisk) != len(want) {
		t.Errorf("the Maildir holds %d messages, want %d", len(onDisk), len(want))
	}
	for _, m := range final[0] {
		if _, ok := onDisk[m.uidl]; !ok {
			t.Errorf("UIDL %s of %s is no base name in the Maildir", m.uidl, m.id)
		}
	}
	for _, n := range names(t, maildir) {
		if strings.HasPrefix(n, store.LockName) {
			t.Errorf("%s left in the Maildir after every session ended", n)
		}
	}
}

// TestPOP3E2EServeDev starts `nfsdrop serve --dev DIR` from nothing (as
// nobody when the test runs as root and setpriv is there), reads the
// addresses and the password it prints, sends with lmtp-send and fetches
// with curl.
func TestPOP3E2EServeDev(t *testing.T) {
	t.Parallel()
	curl := testenv.Require(t, "curl", "curl")[0]
	bin := testenv.Binary(t)
	base := testenv.ShortTempDir(t)
	var prefix []string
	if os.Geteuid() == 0 {
		if setpriv, err := exec.LookPath("setpriv"); err == nil {
			// nobody needs a directory it may create DIR in, and a copy
			// of the binary it may run.
			if err := os.Chmod(base, 0o777); err != nil {
				t.Fatal(err)
			}
			copyBin := filepath.Join(base, "nfsdrop")
			writeFile(t, copyBin, readFile(t, bin))
			if err := os.Chmod(copyBin, 0o755); err != nil {
				t.Fatal(err)
			}
			bin = copyBin
			prefix = []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}
		} else {
			t.Log("setpriv not found: serve --dev runs as root")
		}
	}
	dir := filepath.Join(base, "dev")
	argv := append(slices.Clone(prefix), bin, "serve", "--dev", dir)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = base
	cmd.Env = append(os.Environ(), "HOME="+base)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// One goroutine reads standard output to its end (the process's exit),
	// handing over the banner once it is complete, then reaps the process.
	exited := make(chan struct{})
	printed := make(chan string, 1)
	go func() {
		defer close(exited)
		var out bytes.Buffer
		buf := make([]byte, 4096)
		sent := false
		for {
			n, err := stdout.Read(buf)
			out.Write(buf[:n])
			if !sent && (err != nil || bytes.Contains(out.Bytes(), []byte("Ctrl-C stops."))) {
				printed <- out.String()
				sent = true
			}
			if err != nil {
				cmd.Wait()
				return
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
			return
		default:
		}
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})

	var banner string
	select {
	case banner = <-printed:
	case <-time.After(30 * time.Second):
		t.Fatalf("serve --dev printed nothing in 30s; stderr:\n%s", stderr.String())
	}
	m := regexp.MustCompile(`(?m)^  LMTP +(127\.0\.0\.1:[0-9]+) `).FindStringSubmatch(banner)
	pm := regexp.MustCompile(`(?m)^  POP3 +(127\.0\.0\.1:[0-9]+)$`).FindStringSubmatch(banner)
	um := regexp.MustCompile(`(?m)^  user +(\S+) +password (\S+) `).FindStringSubmatch(banner)
	if m == nil || pm == nil || um == nil {
		t.Fatalf("serve --dev output lacks the LMTP and POP3 addresses or the password:\n%s\nstderr:\n%s", banner, stderr.String())
	}
	lmtpAddr, popAddr, user, password := m[1], pm[1], um[1], um[2]
	if user != devUser {
		t.Errorf("serve --dev user %q, want %q", user, devUser)
	}
	if prefix != nil {
		if st := statT(t, filepath.Join(dir, "mail")); st.Uid != 65534 {
			t.Errorf("serve --dev as nobody made a mail root owned by uid %d", st.Uid)
		}
	}

	msg := []byte("From: Sender <sender@example.net>\r\nTo: " + devUser + "\r\nSubject: dev\r\n" +
		"Message-ID: <dev@example.net>\r\n\r\nHello from the serve --dev test.\r\n")
	msgFile := filepath.Join(base, "dev.eml")
	writeFile(t, msgFile, msg)
	out, errOut, code := runTool(t, nil, nil, testenv.Binary(t), lmtpSendArgs(lmtpAddr, devUser, msgFile)...)
	if code != 0 || !strings.Contains(string(out), devUser+": 250") {
		t.Fatalf("lmtp-send to serve --dev: exit %d\n%s%s", code, out, errOut)
	}
	got, errOut, code := runTool(t, nil, nil, curl, "--silent", "--show-error", "--max-time", "30",
		"--user", user+":"+password, "pop3://"+popAddr+"/1")
	if code != 0 {
		t.Fatalf("curl from serve --dev: exit %d\n%s", code, errOut)
	}
	maildir := filepath.Join(dir, "mail", "example.test", "demo", "Maildir")
	stored := storedMessages(t, maildir)
	if len(stored) != 1 {
		t.Fatalf("the demo Maildir holds %d messages, want 1", len(stored))
	}
	for _, data := range stored {
		if !bytes.Equal(got, pop3Wire(data)) || !bytes.HasSuffix(got, msg) {
			t.Errorf("curl RETR from serve --dev:\n%q\nstored:\n%q", got, data)
		}
	}
	// The wrong password is refused.
	_, _, code = runTool(t, nil, nil, curl, "--silent", "--max-time", "30", "--user", user+":wrong", "pop3://"+popAddr+"/1")
	if code != 67 {
		t.Errorf("curl with a wrong password: exit %d, want 67", code)
	}
}
