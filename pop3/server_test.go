package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

var testMessages = []fakeMsg{
	// Bare LF, lines starting with dots, no line end at the end.
	{data: "Subject: one\nFrom: a@example.org\n\nhello\n.dot line\n..two dots\n.\nbare lf end", uid: "u1"},
	// Already CRLF, a CR at a line's end must not be doubled.
	{data: "Subject: two\r\nX-A: b\r\n\r\nbody1\r\nbody2\r\nbody3\r\n", uid: "u2"},
	{data: "A: b\n\nshort\n", uid: "u3"},
}

// wire is a message as RETR must send it: CRLF line ends, stuffed dots,
// a CRLF added to an unterminated last line.
func wire(data string) string {
	data = strings.ReplaceAll(data, "\r\n", "\n")
	if !strings.HasSuffix(data, "\n") {
		data += "\n"
	}
	lines := strings.SplitAfter(data, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l == "" {
			continue
		}
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(strings.TrimSuffix(l, "\n") + "\r\n")
	}
	return b.String()
}

func unstuff(body string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(body, "\r\n") {
		b.WriteString(strings.TrimPrefix(l, "."))
	}
	return b.String()
}

func TestFullSession(t *testing.T) {
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, baseOptions(), false)
	c := dial(t, ts.addr)
	if g := c.line(); g != "+OK pop.test nfsdrop POP3 ready" {
		t.Fatalf("greeting %q", g)
	}

	c.ask("CAPA", "+OK")
	capa := c.multi()
	for _, want := range []string{"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL PLAIN LOGIN", "IMPLEMENTATION nfsdrop"} {
		if !slices.Contains(capa, want) {
			t.Errorf("CAPA %q lacks %q", capa, want)
		}
	}
	if slices.Contains(capa, "STLS") {
		t.Errorf("CAPA offers STLS without TLS: %q", capa)
	}

	c.ask("STAT", "-ERR")
	c.ask("USER alice", "+OK")
	c.send("PASS secret word") // a space in the password
	c.expect("+OK Logged in, 3 messages")

	var total int64
	for _, m := range testMessages {
		total += m.size()
	}
	c.send("STAT")
	if got, want := c.line(), fmt.Sprintf("+OK 3 %d", total); got != want {
		t.Fatalf("STAT: %q, want %q", got, want)
	}
	c.ask("LIST", "+OK 3 messages")
	list := c.multi()
	wantList := []string{}
	for i, m := range testMessages {
		wantList = append(wantList, fmt.Sprintf("%d %d", i+1, m.size()))
	}
	if !reflect.DeepEqual(list, wantList) {
		t.Fatalf("LIST %q, want %q", list, wantList)
	}
	c.send("LIST 2")
	if got := c.line(); got != fmt.Sprintf("+OK 2 %d", testMessages[1].size()) {
		t.Fatalf("LIST 2: %q", got)
	}
	c.ask("UIDL", "+OK")
	if got := c.multi(); !reflect.DeepEqual(got, []string{"1 u1", "2 u2", "3 u3"}) {
		t.Fatalf("UIDL %q", got)
	}
	c.send("uidl 3") // keywords are case-insensitive
	if got := c.line(); got != "+OK 3 u3" {
		t.Fatalf("UIDL 3: %q", got)
	}

	c.send("RETR 1")
	first := c.line()
	body := c.body()
	if body != wire(testMessages[0].data) {
		t.Fatalf("RETR 1 sent\n%q\nwant\n%q", body, wire(testMessages[0].data))
	}
	if !strings.Contains(body, "\r\n..dot line\r\n...two dots\r\n..\r\n") {
		t.Fatalf("RETR 1 not byte-stuffed: %q", body)
	}
	if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
		t.Fatalf("RETR 1 has a bare LF: %q", body)
	}
	// The size LIST announced is the size of what RETR sends, unstuffed.
	size := int64(len(unstuff(body)))
	if size != testMessages[0].size() || first != fmt.Sprintf("+OK %d octets", size) {
		t.Fatalf("RETR 1: %q and %d octets, LIST said %d", first, size, testMessages[0].size())
	}

	c.ask("TOP 2 1", "+OK")
	if got := c.body(); got != "Subject: two\r\nX-A: b\r\n\r\nbody1\r\n" {
		t.Fatalf("TOP 2 1: %q", got)
	}
	c.ask("TOP 1 0", "+OK")
	if got := c.body(); got != "Subject: one\r\nFrom: a@example.org\r\n\r\n" {
		t.Fatalf("TOP 1 0: %q", got)
	}
	c.ask("TOP 3 99999999999999999999", "+OK")
	if got := c.body(); got != wire(testMessages[2].data) {
		t.Fatalf("TOP 3 huge: %q", got)
	}

	c.ask("DELE 1", "+OK")
	c.send("DELE 1")
	if got := c.line(); got != "-ERR no such message" {
		t.Fatalf("second DELE 1: %q", got)
	}
	c.ask("LIST 1", "-ERR no such message")
	c.ask("RETR 1", "-ERR no such message")
	c.send("STAT")
	if got, want := c.line(), fmt.Sprintf("+OK 2 %d", total-testMessages[0].size()); got != want {
		t.Fatalf("STAT after DELE: %q, want %q", got, want)
	}
	c.ask("LIST", "+OK 2 messages")
	if got := c.multi(); len(got) != 2 || !strings.HasPrefix(got[0], "2 ") {
		t.Fatalf("LIST after DELE: %q", got)
	}
	c.ask("RSET", "+OK maildrop has 3 messages")
	c.send("DELE 3", "RETR 2", "NOOP")
	c.expectAll("+OK message 3 deleted", "+OK")
	if got := c.body(); got != wire(testMessages[1].data) {
		t.Fatalf("RETR 2: %q", got)
	}
	c.expect("+OK")

	c.send("QUIT")
	if got := c.line(); got != "+OK pop.test bye (1 messages deleted)" {
		t.Fatalf("QUIT: %q", got)
	}
	c.eof()

	mb := b.box(t, 0)
	mb.ended(t, 1, 0)
	// RETR 1 and RETR 2 were retrieved; 3 deleted; TOP does not count.
	if !reflect.DeepEqual(mb.deleted, []int{2}) || !reflect.DeepEqual(mb.retrieved, []int{0, 1}) {
		t.Fatalf("Commit(deleted %v, retrieved %v), want [2] [0 1]", mb.deleted, mb.retrieved)
	}
	if cl := b.lastClient(t); cl.Remote.Addr() != netip.MustParseAddr("127.0.0.1") || cl.TLS || cl.Session == "" {
		t.Fatalf("backend saw client %+v", cl)
	}
	line := ts.log.waitFor(t, "pop3 session", "end=quit")
	for _, want := range []string{"user=alice", "retrieved=2", "deleted=1", "tls=false", "remote=127.0.0.1:", "bytes="} {
		if !strings.Contains(line, want) {
			t.Errorf("session log %q lacks %q", line, want)
		}
	}
	if strings.Contains(ts.log.String(), "secret") {
		t.Fatalf("password logged:\n%s", ts.log.String())
	}
}

func TestAuthSASL(t *testing.T) {
	b := newFakeBackend(testMessages...)
	b.users["bob"] = "hunter2"
	ts := startServer(t, b, baseOptions(), false)
	plain := "AGJvYgBodW50ZXIy" // "\x00bob\x00hunter2"

	t.Run("plain initial response", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.ask("AUTH PLAIN "+plain, "+OK Logged in")
		c.ask("STAT", "+OK 3 ")
	})
	t.Run("plain continuation", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("auth plain")
		if got := c.line(); got != "+ " {
			t.Fatalf("challenge %q, want %q", got, "+ ")
		}
		c.ask(plain, "+OK Logged in")
	})
	t.Run("plain wrong password", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("AUTH PLAIN AGJvYgB3cm9uZw==") // \0bob\0wrong
		c.expect(replyAuthFailed)
		c.ask("AUTH PLAIN "+plain, "+OK Logged in")
	})
	t.Run("plain other authorization identity", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("AUTH PLAIN YWxpY2UAYm9iAGh1bnRlcjI=") // alice\0bob\0hunter2
		c.expect(replyAuthFailed)
	})
	t.Run("plain malformed", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("AUTH PLAIN =") // empty initial response: no NULs
		c.expect(replyAuthFailed)
	})
	t.Run("login", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("AUTH LOGIN")
		c.expect("+ VXNlcm5hbWU6") // Username:
		c.send("Ym9i")
		c.expect("+ UGFzc3dvcmQ6") // Password:
		c.send("aHVudGVyMg")       // unpadded
		c.expect("+OK Logged in")
	})
	t.Run("login initial response", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.ask("AUTH LOGIN Ym9i", "+ UGFzc3dvcmQ6")
		c.ask("aHVudGVyMg==", "+OK Logged in")
	})
	t.Run("bad base64", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.ask("AUTH PLAIN !!!notbase64", "-ERR invalid base64")
		c.ask("AUTH LOGIN", "+ ")
		c.ask("*not base64*", "-ERR invalid base64")
		c.send("AUTH PLAIN " + plain) // the session goes on
		c.expect("+OK Logged in")
	})
	t.Run("cancel", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.ask("AUTH LOGIN", "+ ")
		c.ask("*", "-ERR")
		c.ask("AUTH PLAIN", "+ ")
		c.ask("*", "-ERR")
		c.ask("AUTH PLAIN "+plain, "+OK Logged in")
	})
	t.Run("unknown mechanism and list", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.ask("AUTH CRAM-MD5", "-ERR")
		c.ask("AUTH", "+OK")
		if got := c.multi(); !reflect.DeepEqual(got, []string{"PLAIN", "LOGIN"}) {
			t.Fatalf("AUTH list %q", got)
		}
	})
	t.Run("no auth after login", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.login("bob", "hunter2")
		c.send("AUTH PLAIN "+plain, "USER bob", "PASS x")
		c.expectAll("-ERR", "-ERR", "-ERR")
	})
	if strings.Contains(ts.log.String(), "hunter2") {
		t.Fatalf("password logged:\n%s", ts.log.String())
	}
}

func TestPlaintextPolicy(t *testing.T) {
	notLoopback := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	t.Run("refused", func(t *testing.T) {
		opts := baseOptions()
		opts.AllowPlaintext = false
		opts.TrustedNetworks = notLoopback
		b := newFakeBackend()
		ts := startServer(t, b, opts, false)
		c := greeted(t, ts.addr)
		c.ask("CAPA", "+OK")
		capa := c.multi()
		if slices.Contains(capa, "USER") || slices.ContainsFunc(capa, func(s string) bool { return strings.HasPrefix(s, "SASL") }) || slices.Contains(capa, "STLS") {
			t.Fatalf("CAPA offers passwords in the clear: %q", capa)
		}
		for _, cmd := range []string{"USER alice", "PASS secret word", "AUTH PLAIN AGFsaWNlAHNlY3JldCB3b3Jk", "AUTH LOGIN"} {
			c.send(cmd)
			if got := c.line(); got != replyPlaintext {
				t.Fatalf("%s: %q", cmd, got)
			}
		}
		c.ask("AUTH", "+OK")
		if got := c.multi(); len(got) != 0 {
			t.Fatalf("AUTH lists %q", got)
		}
		if len(b.clients) != 0 {
			t.Fatal("backend asked")
		}
	})
	t.Run("trusted", func(t *testing.T) {
		opts := baseOptions()
		opts.AllowPlaintext = false
		opts.TrustedNetworks = append(notLoopback, netip.MustParsePrefix("127.0.0.0/8"))
		ts := startServer(t, newFakeBackend(), opts, false)
		c := greeted(t, ts.addr)
		c.ask("CAPA", "+OK")
		if capa := c.multi(); !slices.Contains(capa, "USER") || !slices.Contains(capa, "SASL PLAIN LOGIN") {
			t.Fatalf("CAPA %q", capa)
		}
		c.login("alice", "secret word")
	})
}

func TestSTLS(t *testing.T) {
	srvTLS, cliTLS := testCert(t)
	opts := baseOptions()
	opts.AllowPlaintext = false
	opts.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	opts.TLSConfig = func() *tls.Config { return srvTLS }
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, opts, false)

	c := greeted(t, ts.addr)
	c.ask("CAPA", "+OK")
	if capa := c.multi(); !slices.Contains(capa, "STLS") || slices.Contains(capa, "USER") {
		t.Fatalf("CAPA before TLS: %q", capa)
	}
	c.send("USER alice")
	if got := c.line(); got != replyPlaintext+", use STLS" {
		t.Fatalf("USER in the clear: %q", got)
	}
	// Commands pipelined after STLS come from before TLS: they must be
	// thrown away, not run inside TLS (RFC 2595, CVE-2011-0411).
	c.send("STLS", "USER alice")
	c.expect("+OK Begin TLS")
	c.startTLS(cliTLS)
	c.ask("CAPA", "+OK")
	if capa := c.multi(); slices.Contains(capa, "STLS") || !slices.Contains(capa, "USER") || !slices.Contains(capa, "SASL PLAIN LOGIN") {
		t.Fatalf("CAPA after TLS: %q", capa)
	}
	c.ask("PASS secret word", "-ERR USER first")
	c.ask("STLS", "-ERR")
	c.login("alice", "secret word")
	if !b.lastClient(t).TLS {
		t.Fatal("backend told the session is not TLS")
	}
	c.ask("RETR 1", "+OK")
	if got := c.body(); got != wire(testMessages[0].data) {
		t.Fatalf("RETR over TLS: %q", got)
	}
	c.ask("QUIT", "+OK")
	ts.log.waitFor(t, "pop3 session", "end=quit", "tls=true")

	t.Run("user forgotten", func(t *testing.T) {
		opts := opts
		opts.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		ts := startServer(t, newFakeBackend(), opts, false)
		c := greeted(t, ts.addr)
		c.ask("USER alice", "+OK")
		c.ask("STLS", "+OK")
		c.startTLS(cliTLS)
		c.ask("PASS secret word", "-ERR USER first")
	})
}

func TestImplicitTLS(t *testing.T) {
	srvTLS, cliTLS := testCert(t)
	opts := baseOptions()
	opts.AllowPlaintext = false
	opts.TLSConfig = func() *tls.Config { return srvTLS }
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, opts, true)
	c := dialTLS(t, ts.addr, cliTLS)
	c.expect("+OK pop.test nfsdrop POP3 ready")
	c.ask("CAPA", "+OK")
	if capa := c.multi(); slices.Contains(capa, "STLS") || !slices.Contains(capa, "USER") {
		t.Fatalf("CAPA on POP3S: %q", capa)
	}
	c.ask("AUTH PLAIN AGFsaWNlAHNlY3JldCB3b3Jk", "+OK Logged in")
	if !b.lastClient(t).TLS {
		t.Fatal("backend told the session is not TLS")
	}
	c.ask("QUIT", "+OK pop.test bye")
	c.eof()

	// A client speaking plain POP3 to the TLS port gets nothing it can
	// read and is dropped.
	raw := dial(t, ts.addr)
	raw.send("USER alice")
	raw.C.SetReadDeadline(time.Now().Add(10 * time.Second))
	if s, _ := raw.R.ReadString('\n'); strings.HasPrefix(s, "+OK") {
		t.Fatalf("plain client got %q", s)
	}
}

func TestLoginErrors(t *testing.T) {
	b := newFakeBackend(testMessages...)
	b.errs["busy"] = failure.New(failure.InUse, "lock", "locked", nil)
	b.errs["flaky"] = failure.Temp("lock", "storage unavailable", syscall.ESTALE)
	b.errs["broken"] = failure.Perm("open", "mailbox damaged", nil)
	b.errs["odd"] = errors.New("something unforeseen")
	b.errs["off"] = failure.New(failure.Disabled, "lookup", "disabled", nil)
	opts := baseOptions()
	opts.AuthFailDelay = 150 * time.Millisecond
	opts.MaxAuthFailures = 10
	ts := startServer(t, b, opts, false)
	c := greeted(t, ts.addr)
	for _, tc := range []struct{ user, pass, want string }{
		{"busy", "x", "-ERR [IN-USE] Mailbox is locked by another session"},
		{"flaky", "x", "-ERR [SYS/TEMP] storage unavailable, try again later"},
		{"broken", "x", "-ERR [SYS/PERM] mailbox damaged"},
		{"odd", "x", "-ERR [SYS/TEMP] "},
		{"alice", "wrong", replyAuthFailed},
		{"nobody", "x", replyAuthFailed},
		{"off", "x", replyAuthFailed},
	} {
		start := time.Now()
		c.send("USER "+tc.user, "PASS "+tc.pass)
		c.expect("+OK")
		got := c.line()
		d := time.Since(start)
		if !strings.HasPrefix(got, tc.want) || (tc.want == replyAuthFailed) != (got == replyAuthFailed) {
			t.Errorf("%s: %q, want %q", tc.user, got, tc.want)
		}
		if tc.want == replyAuthFailed && d < opts.AuthFailDelay {
			t.Errorf("%s: failure answered after %v, before AuthFailDelay", tc.user, d)
		}
		if tc.want != replyAuthFailed && d >= opts.AuthFailDelay {
			t.Errorf("%s: non-credential failure delayed %v", tc.user, d)
		}
	}
	c.login("alice", "secret word")
	log := ts.log.String()
	for _, want := range []string{"user=busy", "user=nobody", "kind=in-use", "kind=not-found", "kind=disabled"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestMaxAuthFailures(t *testing.T) {
	opts := baseOptions()
	opts.MaxAuthFailures = 2
	ts := startServer(t, newFakeBackend(), opts, false)
	c := greeted(t, ts.addr)
	c.send("USER alice", "PASS nope")
	c.expectAll("+OK", replyAuthFailed)
	c.send("AUTH PLAIN AGFsaWNlAG5vcGU=") // alice/nope
	if got := c.line(); got != replyTooManyFails {
		t.Fatalf("second failure: %q", got)
	}
	c.eof()
	ts.log.waitFor(t, "pop3 session", "end=auth-fail")
}

func TestMessageNumbers(t *testing.T) {
	b := newFakeBackend(testMessages[:2]...)
	ts := startServer(t, b, baseOptions(), false)
	// Fewer than maxProtocolErrors bad commands per session.
	bad := [][]string{
		{"RETR 0", "RETR -1", "RETR 99999999999999999999", "RETR 3", "LIST 0", "DELE -0"},
		{"RETR +1", "RETR 1x", "RETR 0x1", "TOP 1", "TOP 1 -1", "TOP 1 x"},
		{"UIDL 18446744073709551617", "RETR １", "RETR", "RETR 1 2", "DELE", "LIST 1 1"},
		{"STAT 1", "NOOP x", "RSET 1", "UIDL 1 2", "TOP 1 1 1", "QUIT x"},
	}
	for _, cmds := range bad {
		c := aliceIn(t, ts.addr)
		for _, cmd := range cmds {
			c.ask(cmd, "-ERR")
		}
		c.send("DELE 01", "RETR 1", "TOP 1 0", "DELE 1", "LIST 2")
		c.expectAll("+OK message 1 deleted", "-ERR no such message", "-ERR no such message", "-ERR no such message", "+OK 2 ")
		c.ask("QUIT", "+OK")
	}
}

func TestGarbage(t *testing.T) {
	ts := startServer(t, newFakeBackend(testMessages...), baseOptions(), false)
	t.Run("errors", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.send("STAT\x00", "US\x00ER alice", "FOO", "", "NOOP", "APOP alice 0123456789abcdef", " USER alice")
		c.expectAll("-ERR NUL", "-ERR NUL", "-ERR unknown command", "-ERR unknown command")
		c.expect("-ERR") // NOOP is for TRANSACTION only
		c.expect("-ERR unknown command")
		c.expect("-ERR unknown command")
		c.login("alice", "secret word")
		c.ask("QUIT", "+OK")
	})
	t.Run("too many errors", func(t *testing.T) {
		c := greeted(t, ts.addr)
		for range maxProtocolErrors {
			c.ask("XYZZY", "-ERR unknown command")
		}
		c.eof()
	})
	t.Run("line too long", func(t *testing.T) {
		c := aliceIn(t, ts.addr)
		c.raw("USER " + strings.Repeat("a", 600) + "\r\n")
		c.expect("-ERR line too long")
		c.eof()
		mb := b0(t, ts)
		mb.ended(t, 0, 1)
	})
	t.Run("longest line", func(t *testing.T) {
		c := greeted(t, ts.addr)
		c.raw("USER " + strings.Repeat("a", defaultMaxLineLength-len("USER \r\n")) + "\r\n")
		c.expect("+OK")
		c.raw("USER " + strings.Repeat("a", defaultMaxLineLength-len("USER \n")) + "\n")
		c.expect("+OK")
	})
}

// b0 is the mailbox of the last login on ts's backend.
func b0(t *testing.T, ts *testServer) *fakeMailbox {
	fb := ts.backend.(*fakeBackend)
	fb.mu.Lock()
	n := len(fb.boxes)
	fb.mu.Unlock()
	return fb.box(t, n-1)
}

func TestPipelining(t *testing.T) {
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, baseOptions(), false)
	c := greeted(t, ts.addr)
	before := ts.writes.Load()
	c.send("USER alice", "PASS secret word", "STAT", "LIST", "UIDL 1", "RETR 3", "DELE 2", "NOOP")
	c.expectAll("+OK", "+OK Logged in", "+OK 3 ", "+OK 3 messages")
	if got := c.multi(); len(got) != 3 {
		t.Fatalf("LIST %q", got)
	}
	c.expect("+OK 1 u1")
	c.expect("+OK ")
	if got := c.body(); got != wire(testMessages[2].data) {
		t.Fatalf("RETR 3 %q", got)
	}
	c.expect("+OK message 2 deleted")
	c.expect("+OK")
	// The answers to commands that came in one packet go out in one write.
	if n := ts.writes.Load() - before; n != 1 {
		t.Errorf("%d writes for one batch of pipelined commands, want 1", n)
	}

	// After QUIT, nothing more is read: the NOOP and STAT get no answer.
	c.send("QUIT", "NOOP", "STAT")
	c.expect("+OK pop.test bye (1 messages deleted)")
	c.eof()
	mb := b.box(t, 0)
	if committed, _ := mb.wait(t); committed != 1 || !reflect.DeepEqual(mb.deleted, []int{1}) || !reflect.DeepEqual(mb.retrieved, []int{2}) {
		t.Fatalf("commit %d (%v, %v)", committed, mb.deleted, mb.retrieved)
	}
}

func TestStalledClient(t *testing.T) {
	// A client that stops reading in the middle of a large RETR must not
	// hold its session (and mailbox lock) forever: the write deadline ends
	// it, and nothing is committed.
	b := newFakeBackend(fakeMsg{gen: 256 << 20})
	opts := baseOptions()
	opts.IdleTimeout = 300 * time.Millisecond
	ts := startServer(t, b, opts, false)
	c := dial(t, ts.addr)
	if tc, ok := c.C.(*net.TCPConn); ok {
		tc.SetReadBuffer(64 << 10)
	}
	c.expect("+OK")
	c.login("alice", "secret word")
	c.send("RETR 1")
	start := time.Now()
	mb := b.box(t, 0)
	mb.ended(t, 0, 1)
	t.Logf("stalled session ended after %v", time.Since(start))
	line := ts.log.waitFor(t, "pop3 session", "user=alice")
	if !strings.Contains(line, "end=timeout") || !strings.Contains(line, "retrieved=0") {
		t.Fatalf("session log %q", line)
	}
}

func TestIdleTimeout(t *testing.T) {
	b := newFakeBackend(testMessages...)
	opts := baseOptions()
	opts.IdleTimeout = 200 * time.Millisecond
	ts := startServer(t, b, opts, false)
	c := aliceIn(t, ts.addr)
	c.ask("DELE 1", "+OK", "-ERR [SYS/TEMP] idle timeout")
	c.eof()
	b.box(t, 0).ended(t, 0, 1)
	ts.log.waitFor(t, "pop3 session", "end=timeout")
}

func TestEOFWithoutQuit(t *testing.T) {
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, baseOptions(), false)
	c := aliceIn(t, ts.addr)
	c.send("DELE 1", "DELE 2")
	c.expectAll("+OK", "+OK")
	c.C.Close()
	b.box(t, 0).ended(t, 0, 1)
	ts.log.waitFor(t, "pop3 session", "end=eof", "deleted=0")
}

func TestCommitFailure(t *testing.T) {
	b := newFakeBackend(testMessages...)
	b.commitErr = failure.Temp("unlink", "", syscall.EIO)
	ts := startServer(t, b, baseOptions(), false)
	c := aliceIn(t, ts.addr)
	c.send("DELE 1", "QUIT")
	c.expect("+OK")
	if got := c.line(); got != "-ERR [SYS/TEMP] some deleted messages not removed" {
		t.Fatalf("QUIT: %q", got)
	}
	c.eof()
	b.box(t, 0).ended(t, 1, 0)
	ts.log.waitFor(t, "pop3 session", "end=quit", "commit:")
}

func TestMessageErrors(t *testing.T) {
	t.Run("open", func(t *testing.T) {
		b := newFakeBackend(testMessages...)
		b.openErr = failure.Temp("open", "message unavailable", syscall.ESTALE)
		ts := startServer(t, b, baseOptions(), false)
		c := aliceIn(t, ts.addr)
		c.send("RETR 1", "TOP 1 1", "NOOP")
		c.expectAll("-ERR [SYS/TEMP] message unavailable", "-ERR [SYS/TEMP] message unavailable", "+OK")
	})
	t.Run("removed", func(t *testing.T) {
		// Removed by another program after the listing (issue 13):
		// not a system failure, and retrying will not bring it back.
		b := newFakeBackend(testMessages...)
		b.openErr = failure.New(failure.NotFound, "open message", "message was removed", nil)
		ts := startServer(t, b, baseOptions(), false)
		c := aliceIn(t, ts.addr)
		c.send("RETR 1", "TOP 1 1")
		for i := 0; i < 2; i++ {
			if got := c.line(); got != "-ERR message was removed" {
				t.Fatalf("reply %q, want -ERR message was removed", got)
			}
		}
	})
	t.Run("read", func(t *testing.T) {
		// The +OK may be out already: the only honest end is to close
		// without the terminator.
		b := newFakeBackend(testMessages...)
		b.readErr = syscall.ESTALE
		ts := startServer(t, b, baseOptions(), false)
		c := aliceIn(t, ts.addr)
		c.send("RETR 1")
		c.C.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got strings.Builder
		for {
			s, err := c.R.ReadString('\n')
			got.WriteString(s)
			if err != nil {
				break
			}
		}
		if strings.Contains(got.String(), "\r\n.\r\n") || strings.HasSuffix(got.String(), ".\r\n") {
			t.Fatalf("truncated message terminated: %q", got.String())
		}
		b.box(t, 0).ended(t, 0, 1)
		ts.log.waitFor(t, "pop3 message read failed")
	})
}

func TestPanic(t *testing.T) {
	b := newFakeBackend(testMessages...)
	b.panicOpen = true
	ts := startServer(t, b, baseOptions(), false)
	c := aliceIn(t, ts.addr)
	c.send("RETR 1")
	if got := c.line(); got != replyInternal {
		t.Fatalf("after panic: %q", got)
	}
	c.eof()
	b.box(t, 0).ended(t, 0, 1)
	ts.log.waitFor(t, "pop3 session panic", "open exploded", "stack=")
	// The server goes on.
	aliceIn(t, ts.addr)
}

// TestMaxSessions: when every session is logged in, a newcomer is refused
// and says why; a slot freed by QUIT is taken again.
func TestMaxSessions(t *testing.T) {
	opts := baseOptions()
	opts.MaxSessions = 2
	ts := startServer(t, newFakeBackend(), opts, false)
	c1 := aliceIn(t, ts.addr)
	c2 := greeted(t, ts.addr)
	c2.login("bob", "hunter2")
	c3 := dial(t, ts.addr)
	if got := c3.line(); got != "-ERR [SYS/TEMP] too many sessions, try again later" {
		t.Fatalf("third session: %q", got)
	}
	c3.eof()
	if n := ts.Sessions(); n != 2 {
		t.Fatalf("Sessions() = %d", n)
	}
	c1.ask("QUIT", "+OK")
	c1.eof()
	waitSessions(t, ts.Server, 1)
	c4 := dial(t, ts.addr)
	c4.expect("+OK pop.test")
}

// TestFullServerDropsOldestUnauthenticated: strangers that connect from
// many addresses and never log in cannot keep a real user out. With the
// server full of them, a newcomer gets the slot of the oldest
// unauthenticated session, which is closed; the others go on; and once
// every session is logged in, a newcomer is refused.
func TestFullServerDropsOldestUnauthenticated(t *testing.T) {
	const max = 6
	opts := baseOptions()
	opts.MaxSessions = max
	opts.MaxPerIP = 2
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, opts, false)

	// The attacker: max idle sessions, two per loopback address, in a
	// known order (each is in once its greeting arrived).
	idle := make([]*client, max)
	for i := range idle {
		idle[i] = dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i/2))})
		idle[i].expect("+OK pop.test")
	}
	waitSessions(t, ts.Server, max)

	// A real user still gets in, and logs in.
	user := dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 2, 1)})
	user.expect("+OK pop.test")
	user.login("alice", "secret word")
	user.ask("STAT", "+OK 3 ")

	// The oldest idle session is the one closed; the next oldest answers.
	idle[0].eof()
	idle[1].ask("CAPA", "+OK")
	idle[1].multi()
	ts.log.waitFor(t, "pop3 session", "end=evicted", "remote=127.0.1.1:")
	if n := ts.Sessions(); n != max {
		t.Fatalf("Sessions() = %d, want %d", n, max)
	}

	// Log the other idle slots in (bob), one newcomer each time evicting
	// the oldest remaining stranger, until all are authenticated...
	for i := 1; i < max-1; i++ {
		c := dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(i))})
		c.expect("+OK pop.test")
		c.login("bob", "hunter2")
		idle[i].eof()
	}
	// ...then log in the last stranger: now every session is logged in.
	idle[max-1].login("bob", "hunter2")
	late := dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 4, 1)})
	if got := late.line(); got != "-ERR [SYS/TEMP] too many sessions, try again later" {
		t.Fatalf("newcomer to a server full of logged-in sessions: %q", got)
	}
	late.eof()
	// The logged-in sessions were not touched.
	user.ask("NOOP", "+OK")
	idle[max-1].ask("NOOP", "+OK")
}

// TestLoginTimeout: a session that does not log in is closed at the login
// deadline however busy it keeps itself (USER, CAPA and NOOP are all
// accepted before login without counting as errors or as a login), while
// a session that logged in is not bound by it.
func TestLoginTimeout(t *testing.T) {
	opts := baseOptions()
	opts.LoginTimeout = 300 * time.Millisecond
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, opts, false)

	loggedIn := aliceIn(t, ts.addr)
	start := time.Now()

	c := greeted(t, ts.addr)
	stop := time.Now().Add(10 * time.Second) // a failure bound, not the assertion
	for {
		if time.Now().After(stop) {
			t.Fatal("unauthenticated session still served after 10s")
		}
		c.send("USER mallory")
		if got := c.line(); got != "+OK" {
			if got != "-ERR [SYS/TEMP] login timeout" {
				t.Fatalf("got %q, want +OK or the login timeout", got)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.eof()
	ts.log.waitFor(t, "pop3 session", "end=login-timeout")

	// The logged-in session outlived the login deadline.
	if d := 2*opts.LoginTimeout - time.Since(start); d > 0 {
		time.Sleep(d)
	}
	loggedIn.ask("NOOP", "+OK")
}

func waitSessions(t *testing.T, s *Server, n int64) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() bool { return s.Sessions() == n },
		func() string { return fmt.Sprintf("Sessions() = %d, want %d", s.Sessions(), n) })
}

func TestMaxPerIP(t *testing.T) {
	opts := baseOptions()
	opts.MaxPerIP = 1
	ts := startServer(t, newFakeBackend(), opts, false)
	greeted(t, ts.addr) // the one session 127.0.0.1 may have
	c2 := dial(t, ts.addr)
	if got := c2.line(); got != "-ERR [SYS/TEMP] too many sessions from your address, try again later" {
		t.Fatalf("second session: %q", got)
	}
	c2.eof()
	// Another address is another client (all of 127/8 is loopback).
	c3 := dialFrom(t, ts.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)})
	c3.expect("+OK")
	c3.login("alice", "secret word")
	ts.log.waitFor(t, "pop3 session refused", "too many sessions from your address")
}

func proxyHeader(t *testing.T, version byte, src string, dst string) string {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestProxyTrusted(t *testing.T) {
	b := newFakeBackend(testMessages...)
	opts := baseOptions()
	opts.AllowPlaintext = false
	opts.ProxyNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	opts.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	opts.MaxPerIP = 1
	ts := startServer(t, b, opts, false, func(s *Server) { s.handshakeTimeout = 300 * time.Millisecond })

	// The client address in the header is the one that counts: for the
	// Backend, for trusted_networks (plaintext allowed) and for the log.
	c := dial(t, ts.addr)
	c.raw(proxyHeader(t, 2, "203.0.113.7:4242", "198.51.100.1:110"))
	c.expect("+OK pop.test")
	c.login("alice", "secret word")
	if got := b.lastClient(t).Remote; got != netip.MustParseAddrPort("203.0.113.7:4242") {
		t.Fatalf("backend saw %v", got)
	}
	// v1 too, and MaxPerIP counts real clients, not the balancer.
	c2 := dial(t, ts.addr)
	c2.raw(proxyHeader(t, 1, "203.0.113.8:5000", "198.51.100.1:110"))
	c2.expect("+OK pop.test")
	c3 := dial(t, ts.addr)
	c3.raw(proxyHeader(t, 2, "203.0.113.7:4243", "198.51.100.1:110"))
	c3.expect("-ERR [SYS/TEMP] too many sessions from your address")
	c.ask("QUIT", "+OK")
	ts.log.waitFor(t, "pop3 session", "remote=203.0.113.7:4242", "via=127.0.0.1:")

	// From a balancer, the header is required.
	c4 := dial(t, ts.addr)
	c4.eof()
	ts.log.waitFor(t, "bad PROXY header")
}

func TestProxyUntrusted(t *testing.T) {
	b := newFakeBackend(testMessages...)
	opts := baseOptions()
	opts.ProxyNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	ts := startServer(t, b, opts, false)

	// A header from a peer that is not a balancer is not believed.
	c := dial(t, ts.addr)
	c.raw(proxyHeader(t, 1, "203.0.113.7:4242", "198.51.100.1:110"))
	c.expect("+OK pop.test")
	c.expect("-ERR PROXY header not accepted")
	c.eof()
	ts.log.waitFor(t, "PROXY header refused")

	// v2 is binary; its signature ends in "QUIT\n", which closes.
	c2 := dial(t, ts.addr)
	c2.raw(proxyHeader(t, 2, "203.0.113.7:4242", "198.51.100.1:110") + "USER alice\r\nPASS secret word\r\n")
	c2.expect("+OK pop.test")
	for {
		c2.C.SetReadDeadline(time.Now().Add(10 * time.Second))
		s, err := c2.R.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(s, "+OK Logged in") {
			t.Fatal("logged in after a PROXY v2 header from an untrusted peer")
		}
	}

	// Without a header, the peer is served as itself.
	c3 := dial(t, ts.addr)
	c3.expect("+OK pop.test")
	c3.login("alice", "secret word")
	if got := b.lastClient(t).Remote.Addr(); got != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("backend saw %v", got)
	}
	for _, cl := range b.clients {
		if cl.Remote.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("backend saw %v", cl.Remote)
		}
	}
}

// TestShutdown: a session busy in a command (a RETR its client stopped
// reading) is waited for until the deadline, then closed without
// committing; the listener stops accepting.
func TestShutdown(t *testing.T) {
	b := newFakeBackend(fakeMsg{gen: 256 << 20})
	opts := baseOptions()
	log := &logBuffer{}
	opts.Logger = newTestLogger(log)
	s := New(b, opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()

	c := aliceIn(t, l.Addr().String())
	if tc, ok := c.C.(*net.TCPConn); ok {
		tc.SetReadBuffer(64 << 10)
	}
	c.ask("DELE 1", "+OK")
	c.ask("RSET", "+OK")
	c.send("RETR 1") // not read: the session stays busy writing
	c.expect("+OK")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve: %v", err)
	}
	b.box(t, 0).ended(t, 0, 1)
	if n := s.Sessions(); n != 0 {
		t.Fatalf("Sessions() = %d after Shutdown", n)
	}
	log.waitFor(t, "pop3 session", "end=shutdown", "user=alice")
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("still accepting")
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}

	// Without sessions, Shutdown returns at once.
	s2 := New(b, baseOptions())
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	go s2.Serve(l2)
	if err := s2.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownEndsIdleSessions: sessions waiting for a command, logged
// in or not, are told and closed at once, without committing (no QUIT
// was seen), so that a stop or restart is not held up for
// lmtp.shutdown_timeout by idle clients (it was, until systemd's
// TimeoutStopSec killed the process). Shutdown returns nil: nothing had
// to be forced.
func TestShutdownEndsIdleSessions(t *testing.T) {
	b := newFakeBackend(testMessages...)
	ts := startServer(t, b, baseOptions(), false)
	c := aliceIn(t, ts.addr)
	c.ask("DELE 1", "+OK")
	idle := greeted(t, ts.addr)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with only idle sessions: %v, want nil (they end at once)", err)
	}
	for _, cl := range []*client{c, idle} {
		cl.expect("-ERR [SYS/TEMP] server shutting down")
		cl.eof()
	}
	b.box(t, 0).ended(t, 0, 1)
	ts.log.waitFor(t, "pop3 session", "end=shutdown", "user=alice", "deleted=0")
}

// TestShutdownCarriesOutSentCommands: commands a client had already sent
// when the stop came (here DELE and QUIT pipelined behind a RETR still
// being written) are carried out, QUIT's deletions included: they need
// no further read, and the client is owed their answers.
func TestShutdownCarriesOutSentCommands(t *testing.T) {
	b := newFakeBackend(fakeMsg{gen: 16 << 20})
	opts := baseOptions()
	ts := startServer(t, b, opts, false)
	c := aliceIn(t, ts.addr)
	if tc, ok := c.C.(*net.TCPConn); ok {
		tc.SetReadBuffer(64 << 10)
	}
	// One write: the session reads all three in one go, and the RETR
	// then blocks writing, the client reading no more than its answer line.
	c.raw("RETR 1\r\nDELE 1\r\nQUIT\r\n")
	c.expect("+OK")
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shut <- ts.Shutdown(ctx)
	}()
	testkit.Eventually(t, 10*time.Second, ts.isClosing, func() string { return "the server never started closing" })
	c.body()
	c.expect("+OK")
	c.expect("+OK pop.test bye (1 messages deleted)")
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	b.box(t, 0).ended(t, 1, 0)
}

// TestShutdownEndsPendingTLSHandshake: a POP3S connection whose client
// never starts the handshake does not hold the stop for the handshake
// timeout (30 s).
func TestShutdownEndsPendingTLSHandshake(t *testing.T) {
	srvTLS, _ := testCert(t)
	b := newFakeBackend(testMessages...)
	opts := baseOptions()
	opts.TLSConfig = func() *tls.Config { return srvTLS }
	ts := startServer(t, b, opts, true)
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	testkit.Eventually(t, 10*time.Second, func() bool { return ts.Sessions() == 1 }, func() string { return "no session for the connection" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a handshake pending: %v, want nil (ended at once)", err)
	}
	ts.log.waitFor(t, "pop3 session", "end=shutdown")
}

// TestIdleMemory checks the memory budget: 5,000 idle sessions in at most
// 64 KiB each. It measures a few hundred, server and client ends together
// (both live in this process), so the server end is well below the sum.
func TestIdleMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens hundreds of connections")
	}
	srvTLS, cliTLS := testCert(t)
	for _, tc := range []struct {
		name string
		tls  bool
		n    int
	}{{"plain", false, 400}, {"tls", true, 150}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := baseOptions()
			opts.TLSConfig = func() *tls.Config { return srvTLS }
			b := newFakeBackend(testMessages...)
			ts := startServer(t, b, opts, tc.tls)
			// One session first, with a RETR, so pools and lazily built
			// state exist before the baseline.
			warm := dialMaybeTLS(t, ts.addr, tc.tls, cliTLS)
			warm.expect("+OK")
			warm.login("alice", "secret word")
			warm.ask("RETR 1", "+OK")
			warm.body()

			before := heapAndStacks()
			clients := make([]*client, tc.n)
			for i := range clients {
				c := dialMaybeTLS(t, ts.addr, tc.tls, cliTLS)
				c.expect("+OK")
				c.login("alice", "secret word")
				c.ask("RETR 1", "+OK")
				c.body()
				clients[i] = c
			}
			after := heapAndStacks()
			per := (int64(after) - int64(before)) / int64(tc.n)
			t.Logf("%s: %d idle sessions, %d bytes each (server and client ends together)", tc.name, tc.n, per)
			if per > 64<<10 {
				t.Errorf("%d bytes per idle session, budget 64 KiB", per)
			}
			runtime.KeepAlive(clients)
		})
	}
}

func dialMaybeTLS(t *testing.T, addr string, useTLS bool, cfg *tls.Config) *client {
	if useTLS {
		return dialTLS(t, addr, cfg)
	}
	return dial(t, addr)
}

func heapAndStacks() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func TestNetworks(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "11.0.0.1": false, "2001:db8::1": true, "2001:db9::1": false,
	} {
		if got := inNetworks(netip.MustParseAddr(addr), nets); got != want {
			t.Errorf("inNetworks(%s) = %v", addr, got)
		}
	}
	ap, ok := addrPortOf(&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 110})
	if !ok || ap.String() != "10.0.0.1:110" || !inNetworks(ap.Addr(), nets) {
		t.Errorf("mapped address: %v %v", ap, ok)
	}
	if inNetworks(netip.Addr{}, nets) {
		t.Error("invalid address in networks")
	}
	if _, ok := addrPortOf(&net.UnixAddr{Name: "@", Net: "unix"}); ok {
		t.Error("unix address has an AddrPort")
	}
}
