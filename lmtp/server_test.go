package lmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// The tests drive a real Server over loopback TCP with raw protocol lines,
// the way go-smtp's own server tests do, against a fake Backend whose
// transactions behave according to the recipient's local part:
//
//	unknown*      AddRecipient: failure.NotFound  (550 5.1.1 at RCPT)
//	plainerr      AddRecipient: a plain Go error  (451 4.3.0 at RCPT)
//	panic         AddRecipient panics
//	full          publish: failure.OverQuota      (552 5.2.2 after DATA)
//	deliverplain  publish: a plain Go error       (451 4.3.0 after DATA)
//	deliverpanic  publish panics
//	stageplain    the write (first recipient): a plain Go error
//	stagepanic    the write (first recipient) panics
//	anything else is delivered with key "key-<local>"
//
// AddRecipient folds the address to lower case and drops a "+detail", so
// the canonical address is the unit of MaxUserConcurrency. A fake Deliver
// is a write once (a fakeStaged) and a publish per recipient, as the real
// Backend's is; the mail loop check and the trace headers are the real
// Backend's business and are tested there (internal/backend).

type fakeBackend struct {
	// lenient makes a transaction publish even when reading the message
	// failed, as a careless backend might: the server must still not
	// acknowledge a message it did not receive completely.
	lenient bool
	// entered, when set, gets a value as each write begins; hold, when
	// set, keeps each write from returning until it is closed (a
	// delivery in flight, for as long as a test needs).
	entered chan struct{}
	hold    chan struct{}

	mu     sync.Mutex
	envs   []Envelope
	stages []*fakeStaged
	staged chan *fakeStaged // every write, when it returns
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{staged: make(chan *fakeStaged, 100)}
}

type fakeTxn struct {
	b     *fakeBackend
	env   Envelope
	rcpts []string // canonical addresses
}

type fakeStaged struct {
	b       *fakeBackend
	env     Envelope
	first   string // the first recipient's canonical address
	data    []byte // what the write read
	readErr error  // the error reading it ended with (nil: EOF)
	failed  bool   // the write failed

	deliveries []fakeDelivery
	discards   int
}

type fakeDelivery struct {
	rcpt string // canonical address
}

func local(addr string) string {
	l, _, _ := strings.Cut(addr, "@")
	return l
}

func (b *fakeBackend) Begin(env Envelope) Transaction {
	b.mu.Lock()
	b.envs = append(b.envs, env)
	b.mu.Unlock()
	return &fakeTxn{b: b, env: env}
}

func (tx *fakeTxn) AddRecipient(_ context.Context, address string, admit func(string) error) error {
	canon := strings.ToLower(address)
	if l, d, ok := strings.Cut(canon, "@"); ok {
		l, _, _ = strings.Cut(l, "+")
		canon = l + "@" + d
	}
	switch l := local(canon); {
	case strings.HasPrefix(l, "unknown"):
		return failure.New(failure.NotFound, "lookup", "no such user", nil)
	case l == "plainerr":
		return errors.New("user database exploded")
	case l == "panic":
		panic("backend panic in AddRecipient")
	}
	if admit != nil {
		if err := admit(canon); err != nil {
			return err
		}
	}
	tx.rcpts = append(tx.rcpts, canon)
	return nil
}

func (tx *fakeTxn) Abort() {}

func (tx *fakeTxn) Deliver(_ context.Context, msg io.Reader, status func(int, Status)) int {
	b := tx.b
	st := &fakeStaged{b: b, env: tx.env, first: tx.rcpts[0]}
	failAll := func(err error) int {
		for i := range tx.rcpts {
			status(i, Status{Err: err})
		}
		return len(tx.rcpts)
	}
	written := func() {
		b.mu.Lock()
		b.stages = append(b.stages, st)
		b.mu.Unlock()
		b.staged <- st
		if b.hold != nil {
			<-b.hold
		}
	}
	if b.entered != nil {
		b.entered <- struct{}{}
	}
	switch local(st.first) {
	case "stageplain":
		io.Copy(io.Discard, msg)
		st.failed = true
		written()
		return failAll(errors.New("staging disk exploded"))
	case "stagepanic":
		written()
		panic("backend panic in the write")
	}
	data, err := io.ReadAll(msg)
	b.mu.Lock()
	st.data, st.readErr = data, err
	b.mu.Unlock()
	if err != nil && !b.lenient {
		// Like the store: pass a *failure.Error from the reader on (a
		// size limit), anything else is a temporary failure.
		st.failed = true
		written()
		var fe *failure.Error
		if !errors.As(err, &fe) {
			err = failure.Temp("read message", "message not received completely", err)
		}
		return failAll(err)
	}
	written()
	defer st.discard()
	for i, rcpt := range tx.rcpts {
		key, err := st.publish(rcpt)
		status(i, Status{Key: key, Err: err, Recipients: len(tx.rcpts)})
	}
	return len(tx.rcpts)
}

func (st *fakeStaged) publish(rcpt string) (string, error) {
	st.b.mu.Lock()
	defer st.b.mu.Unlock()
	if st.discards > 0 {
		panic("publish after discard")
	}
	st.deliveries = append(st.deliveries, fakeDelivery{rcpt: rcpt})
	switch local(rcpt) {
	case "full":
		return "", &failure.Error{Kind: failure.OverQuota, Op: "quota", Reason: "mailbox full"}
	case "deliverplain":
		return "", fmt.Errorf("link: %w", errors.New("filer exploded"))
	case "deliverpanic":
		panic("backend panic in publish")
	}
	return "key-" + local(rcpt), nil
}

func (st *fakeStaged) discard() {
	st.b.mu.Lock()
	defer st.b.mu.Unlock()
	st.discards++
}

// snapshot returns a copy of a staged message's state.
func (st *fakeStaged) snapshot() fakeStaged {
	st.b.mu.Lock()
	defer st.b.mu.Unlock()
	c := *st
	c.deliveries = append([]fakeDelivery(nil), st.deliveries...)
	return c
}

func (b *fakeBackend) stageCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.stages)
}

// deliveryCount is the number of Deliver calls so far.
func (b *fakeBackend) deliveryCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, st := range b.stages {
		n += len(st.deliveries)
	}
	return n
}

// nextStage waits for the next Stage call to return.
func (b *fakeBackend) nextStage(t *testing.T) *fakeStaged {
	t.Helper()
	select {
	case st := <-b.staged:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("Stage was not called")
		return nil
	}
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, cond, func() string { return "timed out waiting for " + what })
}

// waitSessionsEnded waits until the server has closed every connection.
// go-smtp closes a connection only after its last command's handler (an
// LMTPData) has returned, so from then on nothing more can happen for the
// session's messages: a test that checks something did NOT happen (no
// Stage, no Deliver) checks after this, not after a fixed sleep.
func (ts *testServer) waitSessionsEnded(t *testing.T) {
	t.Helper()
	eventually(t, "the server to end every session", func() bool { return ts.srv.Connections() == 0 })
}

type testServer struct {
	srv  *Server
	addr string
	log  *testkit.LogBuffer
	b    *fakeBackend
}

func defaultOptions() Options {
	return Options{
		Hostname:       "lmtp.test",
		MaxMessageSize: 1 << 20,
		MaxRecipients:  100,
		MaxLineLength:  4000,
		ReadTimeout:    10 * time.Second,
		WriteTimeout:   10 * time.Second,
	}
}

// startServer serves b on a loopback port with opts (Logger is set here).
func startServer(t *testing.T, b *fakeBackend, opts Options) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.LogBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := New(b, opts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	return &testServer{srv: srv, addr: l.Addr().String(), log: logs, b: b}
}

// client is a raw LMTP client; the methods forward to testkit.LineConn
// under the names this package's tests use.
type client struct{ *testkit.LineConn }

// dial connects and reads the greeting.
func (ts *testServer) dial(t *testing.T) *client {
	t.Helper()
	c := ts.dialRaw(t)
	c.expect("220 ")
	return c
}

func (ts *testServer) dialRaw(t *testing.T) *client {
	t.Helper()
	c := testkit.Dial(t, "tcp", ts.addr)
	// Longer than the server's own 10 s timeouts, which some tests await.
	c.Timeout = 20 * time.Second
	return &client{c}
}

// send writes s in one write: several commands at once are pipelined.
func (c *client) send(s string) { c.T.Helper(); c.Raw(s) }

// reply reads one reply, all of its lines, and returns its last line
// ("" at EOF).
func (c *client) reply() string { c.T.Helper(); return c.Reply() }

// expect reads one reply and checks it starts with prefix.
func (c *client) expect(prefix string) string { c.T.Helper(); return c.ExpectReply(prefix) }

// expectEOF checks the server closed the connection.
func (c *client) expectEOF() { c.T.Helper(); c.ExpectEOF() }

// expectClosedOr421 checks the server closed the connection, with or
// without a 421 first.
func (c *client) expectClosedOr421() {
	c.T.Helper()
	line, err := c.R.ReadString('\n')
	if err == nil && strings.HasPrefix(line, "421 ") {
		c.expectEOF()
		return
	}
	if err == nil || line != "" {
		c.T.Fatalf("got %q (%v), want the connection closed", line, err)
	}
}

// hello sends LHLO and reads its reply.
func (c *client) hello() {
	c.T.Helper()
	c.send("LHLO client.test\r\n")
	c.expect("250 ")
}

// session dials and says LHLO.
func (ts *testServer) session(t *testing.T) *client {
	t.Helper()
	c := ts.dial(t)
	c.hello()
	return c
}

// exchange sends cmds in one write (pipelined) and reads one reply per
// entry of want, each of which must start with it, in order.
func (c *client) exchange(cmds string, want ...string) {
	c.T.Helper()
	c.send(cmds)
	for _, w := range want {
		c.expect(w)
	}
}

// envelope is MAIL FROM:<from> and one RCPT TO per recipient.
func envelope(from string, rcpts ...string) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + from + ">\r\n")
	for _, r := range rcpts {
		b.WriteString("RCPT TO:<" + r + ">\r\n")
	}
	return b.String()
}

// startData opens a transaction from sender@x.test to rcpts, all of which
// must be accepted, and sends DATA up to its 354.
func (c *client) startData(rcpts ...string) {
	c.T.Helper()
	c.exchange(envelope("sender@x.test", rcpts...)+"DATA\r\n", accepted(len(rcpts)+1, "354 ")...)
}

// accepted is n "250 " replies followed by then.
func accepted(n int, then ...string) []string {
	return append(slices.Repeat([]string{"250 "}, n), then...)
}

// deliverOK runs one whole transaction for rcpts that must all succeed.
func (c *client) deliverOK(from string, msg string, rcpts ...string) {
	c.T.Helper()
	c.exchange(envelope(from, rcpts...), accepted(len(rcpts)+1)...)
	c.exchange("DATA\r\n", "354 ")
	c.send(msg + ".\r\n")
	for _, r := range rcpts {
		c.expect("250 2.0.0 <" + r + "> <key-")
	}
}

// startWith serves a new fake backend with the default options as set
// changes them.
func startWith(t *testing.T, set func(*Options)) *testServer {
	t.Helper()
	opts := defaultOptions()
	set(&opts)
	return startServer(t, newFakeBackend(), opts)
}

// retryRcpt repeats RCPT TO:<alice@example.test> on c, inside a
// transaction, until it is accepted: alice's delivery slot, held by
// another session, has been released.
func retryRcpt(t *testing.T, c *client, what string) {
	t.Helper()
	eventually(t, what, func() bool {
		c.send("RCPT TO:<alice@example.test>\r\n")
		return strings.HasPrefix(c.reply(), "250 ")
	})
}

// waitRcptAccepted opens a transaction on c and retries alice there
// (retryRcpt).
func waitRcptAccepted(t *testing.T, c *client, what string) {
	t.Helper()
	c.exchange(envelope("sender@x.test"), "250 ")
	retryRcpt(t, c, what)
}

const simpleMsg = "From: sender@x.test\r\nSubject: test\r\n\r\nHello.\r\n"

// sameMessage checks that the backend read exactly the message the client
// sent (the trace headers are the backend's to add).
func sameMessage(t *testing.T, data []byte, msg string) {
	t.Helper()
	if !bytes.Equal(data, []byte(msg)) {
		t.Fatalf("the backend read\n %q\nwant\n %q", data, msg)
	}
}

func TestPipelining(t *testing.T) {
	ts := startServer(t, newFakeBackend(), defaultOptions())
	c := ts.dial(t)
	// RFC 2033 section 4.2 / RFC 2920: a client may send the whole
	// envelope in one write; replies come back in order.
	c.send("LHLO client.test\r\nMAIL FROM:<sender@x.test> SIZE=100\r\nRCPT TO:<alice@example.test>\r\n" +
		"RCPT TO:<unknown@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.0.0 ")
	c.expect("250 2.0.0 ")
	c.expect("550 5.1.1 ")
	c.expect("250 2.0.0 ")
	c.expect("354 ")
	// The end of data, and the next transaction, in one write too.
	c.send(simpleMsg + ".\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<carol@example.test>\r\nNOOP\r\nQUIT\r\n")
	c.expect("250 2.0.0 <alice@example.test> <key-alice> Saved")
	c.expect("250 2.0.0 <bob@example.test> <key-bob> Saved")
	c.expect("250 2.0.0 ") // RSET
	c.expect("250 2.0.0 ") // MAIL
	c.expect("250 2.0.0 ") // RCPT
	c.expect("250 2.0.0 ") // NOOP
	c.expect("221 ")
	c.expectEOF()
}

func TestLHLOAdvertises(t *testing.T) {
	ts := startServer(t, newFakeBackend(), defaultOptions())
	c := ts.dial(t)
	c.send("LHLO client.test\r\n")
	var lines []string
	for {
		line, err := c.R.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
		if line[3] == ' ' {
			break
		}
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "CHUNKING", "BINARYMIME", "SIZE 1048576"} {
		if !strings.Contains(all, want) {
			t.Errorf("LHLO reply lacks %s:\n%s", want, all)
		}
	}
}

func TestRSET(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxUserConcurrency = 1 })
	c := ts.session(t)
	// RSET drops the transaction: DATA has no recipients, RCPT no sender.
	c.exchange(envelope("sender@x.test", "alice@example.test")+"RSET\r\nDATA\r\n", accepted(2, "250 2.0.0 ", "502 5.5.1 ")...)
	c.exchange("RCPT TO:<alice@example.test>\r\n", "502 5.5.1 ")
	// RSET released alice's delivery slot: another session may take it.
	ts.session(t).deliverOK("sender@x.test", simpleMsg, "alice@example.test")
	// A new transaction after RSET works.
	c.deliverOK("sender@x.test", simpleMsg, "bob@example.test")
	if n := ts.b.stageCount(); n != 2 {
		t.Errorf("%d messages staged, want 2", n)
	}
}

func TestPerRecipientReplies(t *testing.T) {
	b := newFakeBackend()
	ts := startServer(t, b, defaultOptions())
	c := ts.session(t)
	c.exchange(envelope("sender@x.test"), "250 ")
	rcpt := func(addr, want string) { c.exchange("RCPT TO:<"+addr+">\r\n", want) }
	rcpt("alice@example.test", "250 2.0.0 ")
	rcpt("unknown@example.test", "550 5.1.1 ")
	// A plain Go error from the backend is temporary, never go-smtp's
	// 554 5.0.0.
	rcpt("plainerr@example.test", "451 4.3.0 ")
	rcpt("full@example.test", "250 2.0.0 ")
	rcpt("deliverplain@example.test", "250 2.0.0 ")
	rcpt("bob@example.test", "250 2.0.0 ")
	c.exchange("DATA\r\n", "354 ")
	// One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
	c.exchange(simpleMsg+".\r\n",
		"250 2.0.0 <alice@example.test> <key-alice> Saved",
		"552 5.2.2 <full@example.test> ",
		"451 4.3.0 <deliverplain@example.test> ",
		"250 2.0.0 <bob@example.test> <key-bob> Saved")
	c.exchange("NOOP\r\n", "250 ") // and nothing else was answered in between

	st := b.nextStage(t)
	eventually(t, "Discard", func() bool { return st.snapshot().discards == 1 })
	s := st.snapshot()
	var got []string
	for _, d := range s.deliveries {
		got = append(got, d.rcpt)
	}
	if want := "alice@example.test full@example.test deliverplain@example.test bob@example.test"; strings.Join(got, " ") != want {
		t.Errorf("Deliver calls %v, want %s", got, want)
	}
	if s.first != "alice@example.test" {
		t.Errorf("staged near %s, want the first accepted recipient", s.first)
	}

	// A plain Go error from Stage: every recipient 451 4.3.0.
	c.startData("stageplain@example.test", "bob@example.test")
	c.exchange(simpleMsg+".\r\n", "451 4.3.0 <stageplain@example.test> ", "451 4.3.0 <bob@example.test> ")
	if s := b.nextStage(t).snapshot(); len(s.deliveries) != 0 {
		t.Errorf("Deliver called after Stage failed: %+v", s.deliveries)
	}
	if strings.Contains(ts.log.String(), "code=554") {
		t.Errorf("a 554 was logged:\n%s", ts.log)
	}
}

func TestMaxRecipients(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxRecipients = 2 })
	c := ts.session(t)
	c.exchange(envelope("s@x.test", "a@example.test", "b@example.test", "c@example.test"), accepted(3, "452 4.5.3 ")...)
}

// TestDisconnectMidDATA: a client that goes away in the middle of a
// message must get nothing acknowledged: the reader the backend writes
// from fails, the recipient is deferred (even when a careless backend
// published), and the recipient's delivery slot is released with the
// session. (That the real backend publishes nothing is tested in
// internal/backend.)
func TestDisconnectMidDATA(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lenient bool
		partial string
	}{
		{"in body", false, "Subject: cut\r\n\r\nthe body starts but "},
		{"in body, lenient backend", true, "Subject: cut\r\n\r\nthe body starts but "},
		{"in header", false, "Subject: cut\r\nX-Long: the header never en"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend()
			b.lenient = tc.lenient
			opts := defaultOptions()
			opts.MaxUserConcurrency = 1
			ts := startServer(t, b, opts)
			c := ts.session(t)
			c.startData("alice@example.test")
			c.send(tc.partial)
			// Make sure the server has read the partial message before
			// the connection drops.
			time.Sleep(50 * time.Millisecond)
			c.C.Close()

			st := b.nextStage(t)
			if s := st.snapshot(); s.readErr == nil || errors.Is(s.readErr, io.EOF) {
				t.Fatalf("the backend's reader ended with %v, want an error (data %q)", s.readErr, s.data)
			}
			if !tc.lenient && !st.snapshot().failed {
				t.Fatal("fake write did not fail")
			}
			if tc.lenient {
				eventually(t, "Discard of the staged copy", func() bool { return st.snapshot().discards == 1 })
			}
			eventually(t, "the recipient deferred", func() bool {
				return strings.Contains(ts.log.String(), "msg=deferred")
			})
			ts.waitSessionsEnded(t)
			if s := st.snapshot(); !tc.lenient && len(s.deliveries) != 0 {
				t.Fatalf("published a message that was cut off: %+v", s.deliveries)
			}

			// alice's slot is free again once the session is gone.
			waitRcptAccepted(t, ts.session(t), "alice's delivery slot released")
			if strings.Contains(ts.log.String(), "code=250") {
				t.Errorf("something was logged as delivered:\n%s", ts.log)
			}
		})
	}
}

func TestOversize(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxMessageSize = 2000 })
	b := ts.b
	c := ts.session(t)

	// SIZE= above the limit is refused at MAIL FROM (RFC 1870).
	c.exchange("MAIL FROM:<sender@x.test> SIZE=2001\r\n", "552 5.3.4 ")
	c.exchange("MAIL FROM:<sender@x.test> SIZE=2000\r\nRSET\r\n", "250 ", "250 ")

	// A body above the limit (announced or not): 552 5.3.4 per recipient.
	for _, msg := range []string{
		"Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 80),
		"Subject: big header\r\nX-Big: " + strings.Repeat("x", 3000) + "\r\n\r\nbody\r\n",
	} {
		c.startData("alice@example.test", "bob@example.test")
		c.exchange(msg+".\r\n", "552 5.3.4 <alice@example.test> ", "552 5.3.4 <bob@example.test> ")
	}
	// The connection is still in step.
	c.deliverOK("sender@x.test", simpleMsg, "alice@example.test")
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, st := range b.stages {
		n += len(st.deliveries)
	}
	if n != 1 {
		t.Errorf("%d deliveries, want 1 (only the last, small message)", n)
	}
}

// allBytes is every byte value, with the sequences DATA must not
// mistake for the end of the message.
func allBytes() string {
	var b strings.Builder
	for i := 0; i < 256; i++ {
		b.WriteByte(byte(i))
	}
	return b.String()
}

func TestBodyBytesExact(t *testing.T) {
	b := newFakeBackend()
	ts := startServer(t, b, defaultOptions())
	c := ts.session(t)

	t.Run("DATA BODY=8BITMIME", func(t *testing.T) {
		// NUL bytes, 8-bit bytes, a bare CR and a leading dot: stored
		// exactly (the dot unstuffed, RFC 5321 4.5.2).
		msg := "Subject: nul\r\nContent-Transfer-Encoding: 8bit\r\n\r\nNUL\x00here \x00\x00 and \xff\xfe\xc3\xa9 bare\rCR\r\n.leading dot\r\n\x00\r\n"
		wire := strings.ReplaceAll(msg, "\r\n.", "\r\n..")
		c.exchange("MAIL FROM:<sender@x.test> BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n", accepted(2, "354 ")...)
		c.exchange(wire+".\r\n", "250 2.0.0 <alice@example.test> ")
		st := b.nextStage(t).snapshot()
		sameMessage(t, st.data, msg)
	})

	t.Run("BDAT BODY=BINARYMIME", func(t *testing.T) {
		// Binary content in two chunks: bare LF, bare CR, NUL, every
		// byte value and a CRLF.CRLF that is not an end of data.
		msg := "Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n" + allBytes() + "\r\n.\r\nbare\nLF\x00" + allBytes()
		first, second := msg[:100], msg[100:]
		c.exchange("MAIL FROM:<sender@x.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n", accepted(3)...)
		c.exchange("BDAT "+strconv.Itoa(len(first))+"\r\n"+first, "250 2.0.0 ")
		c.exchange("BDAT "+strconv.Itoa(len(second))+" LAST\r\n"+second,
			"250 2.0.0 <alice@example.test> <key-alice> Saved", "250 2.0.0 <bob@example.test> <key-bob> Saved")
		st := b.nextStage(t).snapshot()
		sameMessage(t, st.data, msg)
	})

	t.Run("BINARYMIME refuses DATA", func(t *testing.T) {
		c.exchange("MAIL FROM:<sender@x.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nRSET\r\n", accepted(2, "502 5.5.1 ", "250 ")...)
	})

	t.Run("BDAT with BODY=8BITMIME", func(t *testing.T) {
		msg := "Subject: chunk\r\n\r\n8bit \xe2\x82\xac\r\n"
		c.exchange("MAIL FROM:<sender@x.test> BODY=8BITMIME\r\nRCPT TO:<carol@example.test>\r\n", accepted(2)...)
		c.exchange("BDAT "+strconv.Itoa(len(msg))+" LAST\r\n"+msg, "250 2.0.0 <carol@example.test> <key-carol> Saved")
		st := b.nextStage(t).snapshot()
		sameMessage(t, st.data, msg)
	})
}

func TestLineTooLong(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxLineLength = 1000 })
	b := ts.b

	t.Run("command", func(t *testing.T) {
		c := ts.session(t)
		c.exchange("NOOP "+strings.Repeat("x", 1500)+"\r\n", "500 5.4.0 ")
		c.expectEOF()
	})

	t.Run("DATA", func(t *testing.T) {
		c := ts.session(t)
		c.startData("alice@example.test")
		c.send("Subject: long\r\n\r\n" + strings.Repeat("y", 1500) + "\r\n.\r\n")
		line := c.reply()
		if !regexp.MustCompile(`^[45]\d\d [45]\.\d+\.\d+ <alice@example.test> `).MatchString(line) || strings.HasPrefix(line, "554 5.0.0") {
			t.Fatalf("reply to a message with a %d-byte line: %q, want a 4xx or 5xx refusal", 1500, line)
		}
		c.Close()
		ts.waitSessionsEnded(t)
		b.mu.Lock()
		for _, st := range b.stages {
			if len(st.deliveries) != 0 {
				t.Errorf("message with a too long line delivered: %+v", st.deliveries)
			}
		}
		b.mu.Unlock()
	})

	t.Run("BDAT has no line limit", func(t *testing.T) {
		c := ts.session(t)
		msg := "Subject: long\r\n\r\n" + strings.Repeat("z", 1500) + "\r\n"
		c.exchange("MAIL FROM:<sender@x.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\n", accepted(2)...)
		// The chunk goes in a write of its own. go-smtp v0.25.1 lifts the
		// line limit only once it has read the BDAT command, so a chunk
		// that arrives in the same read as its command is still checked
		// for line length (and a long "line" in it ends the session with
		// 500 5.4.0). Postfix never sends BDAT over LMTP.
		c.send("BDAT " + strconv.Itoa(len(msg)) + " LAST\r\n")
		time.Sleep(50 * time.Millisecond)
		c.exchange(msg, "250 2.0.0 <alice@example.test> <key-alice> Saved")
	})

	// The server is still up.
	ts.session(t).deliverOK("sender@x.test", simpleMsg, "bob@example.test")
}

func TestGarbageCommands(t *testing.T) {
	ts := startServer(t, newFakeBackend(), defaultOptions())

	t.Run("out of order and malformed", func(t *testing.T) {
		c := ts.dial(t)
		for _, tc := range []struct{ cmd, want string }{
			{"HELO client.test", "500 5.5.1 "}, // LMTP: LHLO only
			{"EHLO client.test", "500 5.5.1 "},
			{"MAIL FROM:<sender@x.test>", "502 5.5.1 "}, // before LHLO
			{"LHLO client.test", "250 "},
			{"RCPT TO:<alice@example.test>", "502 5.5.1 "}, // before MAIL
			{"DATA", "502 5.5.1 "},
			{"BDAT 10 LAST", "502 5.5.1 "}, // (its 10 bytes follow)
			{"0123456789MAIL FROM:alice", "501 5.5.2 "},
			{"MAIL FROM:<sender@x.test> BODY=9BIT", "501 5.5.4 "},
			{"MAIL FROM:<sender@x.test> SIZE=huge", "501 5.5.4 "},
			{"MAIL FROM:<sender@x.test> FOO=bar", "500 5.5.4 "},
			{"MAIL FROM:<sender@x.test>", "250 "},
			{"MAIL FROM:<sender@x.test>", "250 "}, // a new MAIL starts over
			{"RCPT TO:alice", "501 5.5.2 "},
			{"RCPT TO:<alice@example.test> NOTIFY=NEVER", "504 5.5.4 "},
			{"BDAT x", "501 5.5.4 "},
			{"DATA now", "501 5.5.4 "},
			{"VRFY alice", "252 "},
			{"EXPN list", "502 5.5.1 "},
			{"STARTTLS", "502 5.5.1 "},
			{"AUTH PLAIN", "5"},
			{"RSET", "250 "},
			{"NOOP", "250 "},
		} {
			c.send(tc.cmd + "\r\n")
			if got := c.reply(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("%q: got %q, want %q...", tc.cmd, got, tc.want)
			}
		}
	})

	t.Run("too many errors close the session", func(t *testing.T) {
		c := ts.session(t)
		c.exchange("XYZZY\r\n\x00\x01\x02\xff\xfe\r\nPLUGH plover\r\n", "50", "50", "50")
		// The fourth protocol error ends it.
		c.exchange("FROB\r\n", "500 5.5.2 ", "500 5.5.1 ")
		c.expectEOF()
	})

	// Still serving.
	ts.session(t).deliverOK("sender@x.test", simpleMsg, "alice@example.test")
}

func TestMaxConnections(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxConnections = 2 })
	c1 := ts.dial(t)
	c2 := ts.dial(t)
	c3 := ts.dialRaw(t)
	c3.expect("421 4.3.2 lmtp.test ")
	c3.expectEOF()
	// The refused connection is not counted.
	if n := ts.srv.Connections(); n != 2 {
		t.Errorf("Connections() = %d, want 2", n)
	}
	c2.hello()
	c2.deliverOK("sender@x.test", simpleMsg, "alice@example.test")

	c1.exchange("QUIT\r\n", "221 ")
	eventually(t, "the closed connection to be uncounted", func() bool { return ts.srv.Connections() == 1 })
	ts.session(t).deliverOK("sender@x.test", simpleMsg, "bob@example.test")
}

func TestMaxUserConcurrency(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxUserConcurrency = 1 })
	s1 := ts.session(t)
	s2 := ts.session(t)

	s1.exchange(envelope("sender@x.test", "alice@example.test"), accepted(2)...)
	// s1 holds alice: s2 may not deliver to her, under any spelling of
	// her address, but may deliver to others.
	s2.exchange(envelope("sender@x.test", "alice@example.test", "Alice+lists@Example.TEST", "bob@example.test"),
		"250 ", "451 4.3.0 ", "451 4.3.0 ", "250 ")

	// A transaction ending (here with RSET) releases the slot.
	s1.exchange("RSET\r\n", "250 ")
	s2.exchange("RCPT TO:<alice@example.test>\r\n", "250 ")
	s1.exchange(envelope("sender@x.test", "alice@example.test"), "250 ", "451 4.3.0 ")
	// DATA ends s2's transaction and releases alice again.
	s2.exchange("DATA\r\n", "354 ")
	s2.exchange(simpleMsg+".\r\n", "250 2.0.0 <bob@example.test> ", "250 2.0.0 <alice@example.test> ")
	// (go-smtp resets the transaction just after writing the replies.)
	retryRcpt(t, s1, "alice released after DATA")
	// A session that goes away releases its slots too.
	s1.C.Close()
	waitRcptAccepted(t, ts.session(t), "the slot of a closed session released")
}

// TestEnvelope: a transaction begins at MAIL FROM with what its trace
// headers need (the Backend writes them): the sender, the client's LHLO
// name and address, the protocol, the transaction id of the log, and
// whether each recipient gets its own Delivered-To (DeliveredToAlways).
func TestEnvelope(t *testing.T) {
	for _, always := range []bool{false, true} {
		t.Run(fmt.Sprintf("DeliveredToAlways=%v", always), func(t *testing.T) {
			ts := startWith(t, func(o *Options) { o.DeliveredToAlways = always })
			ts.session(t).deliverOK("sender@x.test", simpleMsg, "alice@example.test", "bob@example.test")
			env := ts.b.nextStage(t).env
			if env.From != "sender@x.test" || env.Helo != "client.test" || !strings.HasPrefix(env.Remote, "127.0.0.1:") ||
				env.Protocol != "LMTP" || env.ID == "" || env.DeliveredToEach != always {
				t.Errorf("envelope %+v", env)
			}
			if !strings.Contains(ts.log.String(), "session="+env.ID+" ") {
				t.Errorf("the log does not name transaction %s:\n%s", env.ID, ts.log)
			}
		})
	}
}

// TestBackendPanic: a panic in the backend answers 4xx (the client
// retries), closes that one connection, is logged, and releases what the
// session held; the server goes on serving.
func TestBackendPanic(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxUserConcurrency = 1 })
	b := ts.b

	t.Run("Resolve", func(t *testing.T) {
		c := ts.session(t)
		c.exchange(envelope("sender@x.test", "alice@example.test", "panic@example.test"), accepted(2, "421 4.")...)
		c.expectEOF()
	})

	t.Run("Deliver", func(t *testing.T) {
		c := ts.session(t)
		c.startData("alice@example.test", "deliverpanic@example.test", "bob@example.test")
		c.exchange(simpleMsg+".\r\n", "250 2.0.0 <alice@example.test> <key-alice> Saved", "421 4.", "421 4.")
		c.expectEOF()
		st := b.nextStage(t)
		eventually(t, "Discard after the panic", func() bool { return st.snapshot().discards == 1 })
	})

	t.Run("Stage", func(t *testing.T) {
		c := ts.session(t)
		c.startData("stagepanic@example.test", "bob@example.test")
		c.exchange(simpleMsg+".\r\n", "421 4.", "421 4.")
		c.expectEOF()
		b.nextStage(t)
	})

	if !strings.Contains(ts.log.String(), "panic") {
		t.Errorf("the panics were not logged:\n%s", ts.log)
	}
	// Still serving, and the sessions that panicked released alice and
	// bob.
	c := ts.session(t)
	eventually(t, "slots released", func() bool {
		c.exchange(envelope("sender@x.test", "alice@example.test", "bob@example.test"), "250 ")
		ok := strings.HasPrefix(c.reply(), "250 ")
		ok = strings.HasPrefix(c.reply(), "250 ") && ok
		c.exchange("RSET\r\n", "250 ")
		return ok
	})
	c.deliverOK("sender@x.test", simpleMsg, "alice@example.test", "bob@example.test")
}

// busyConns counts the server's connections inside LMTPData.
func (ts *testServer) busyConns() int {
	ts.srv.connMu.Lock()
	defer ts.srv.connMu.Unlock()
	n := 0
	for c := range ts.srv.openConns {
		if c.busy.Load() {
			n++
		}
	}
	return n
}

// TestShutdownDrains: Shutdown closes idle connections and those in a
// transaction before DATA at once (nothing was acknowledged on them), lets
// a delivery inside DATA finish and answer, then closes that connection
// too and returns.
func TestShutdownDrains(t *testing.T) {
	ts := startWith(t, func(o *Options) { o.MaxUserConcurrency = 1 })
	b := ts.b

	idle := ts.session(t)
	beforeData := ts.session(t)
	beforeData.exchange(envelope("sender@x.test", "bob@example.test"), accepted(2)...)
	inData := ts.session(t)
	inData.startData("alice@example.test")
	inData.send("Subject: in flight\r\n\r\n")
	eventually(t, "the delivery to be inside DATA", func() bool { return ts.busyConns() == 1 })

	// What the backend had done when Shutdown returned: it must not
	// return before the delivery inside DATA is stored (checked below
	// from this record, not by watching it for a while).
	type shutdownResult struct {
		err    error
		stored int
	}
	done := make(chan shutdownResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := ts.srv.Shutdown(ctx)
		done <- shutdownResult{err: err, stored: b.deliveryCount()}
	}()
	idle.expectClosedOr421()
	beforeData.expectClosedOr421()
	eventually(t, "the listener closed", func() bool {
		conn, err := net.Dial("tcp", ts.addr)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})

	// The delivery in flight completes and is answered, with the whole
	// message stored; then its connection is closed too.
	inData.exchange("the rest of the body\r\n.\r\n", "250 2.0.0 <alice@example.test> <key-alice> Saved")
	inData.expectEOF()
	if s := b.nextStage(t).snapshot(); !bytes.HasSuffix(s.data, []byte("Subject: in flight\r\n\r\nthe rest of the body\r\n")) {
		t.Errorf("stored %q", s.data)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Errorf("Shutdown: %v", r.err)
		}
		if r.stored != 1 {
			t.Errorf("Shutdown returned with %d deliveries stored, want 1: it returned while a delivery was inside DATA", r.stored)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last delivery")
	}
	if n := b.stageCount(); n != 1 {
		t.Errorf("%d messages staged, want 1", n)
	}
}

// TestShutdownAtDATA races Shutdown against a DATA that has just been
// accepted: whichever way it goes, a message is acknowledged only when it
// was received and stored whole.
func TestShutdownAtDATA(t *testing.T) {
	for i := range 5 {
		b := newFakeBackend()
		ts := startServer(t, b, defaultOptions())
		c := ts.session(t)
		c.startData("alice@example.test")
		c.send("Subject: race\r\n\r\n")
		go ts.srv.Shutdown(context.Background())
		time.Sleep(10 * time.Millisecond)
		io.WriteString(c.C, "body\r\n.\r\n") // may fail: the server may be gone
		line, _ := c.R.ReadString('\n')
		if !strings.HasPrefix(line, "250 ") {
			continue // deferred or dropped: Postfix retries
		}
		select {
		case st := <-b.staged:
			if s := st.snapshot(); !bytes.HasSuffix(s.data, []byte("Subject: race\r\n\r\nbody\r\n")) {
				t.Errorf("run %d: acknowledged %q but stored %q", i, line, s.data)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("run %d: acknowledged %q without staging", i, line)
		}
	}
}

// TestResetDuringBDAT: go-smtp runs LMTPData in its own goroutine for BDAT
// and calls the session's Reset from the connection's goroutine while it
// still runs: on RSET between chunks, on a chunk beyond the size limit,
// and (Logout) when the connection closes. The delivery in flight keeps
// its own envelope and recipients (go test -race finds no race) and holds
// the recipients' concurrency slots until it has really ended, then
// releases them once.
func TestResetDuringBDAT(t *testing.T) {
	const first = "From: sender@x.test\r\nSubject: bdat\r\n\r\nfirst chunk\r\n"
	for _, tc := range []struct {
		name  string
		abort func(c *client)
	}{
		{"RSET", func(c *client) { c.exchange("RSET\r\n", "250 ") }},
		{"oversize chunk", func(c *client) {
			big := strings.Repeat("x", 2048)
			c.exchange("BDAT "+strconv.Itoa(len(big))+"\r\n"+big, "552 5.3.4 ")
		}},
		{"connection closed", func(c *client) { c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend()
			b.entered = make(chan struct{}, 10)
			b.hold = make(chan struct{})
			opts := defaultOptions()
			opts.MaxMessageSize = 1024
			opts.MaxUserConcurrency = 1
			ts := startServer(t, b, opts)

			c := ts.session(t)
			c.exchange(envelope("sender@x.test", "alice@example.test"), accepted(2)...)
			c.exchange("BDAT "+strconv.Itoa(len(first))+"\r\n"+first, "250 ")
			select {
			case <-b.entered: // LMTPData is staging, waiting for more
			case <-time.After(10 * time.Second):
				t.Fatal("Stage was not called")
			}
			tc.abort(c)

			// The delivery is still in flight (Stage is held): alice's
			// slot is still taken.
			other := ts.session(t)
			other.exchange(envelope("sender@x.test", "alice@example.test"), "250 ", "451 4.3.0 ")

			close(b.hold)
			st := b.nextStage(t)
			if snap := st.snapshot(); !snap.failed || len(snap.deliveries) != 0 {
				t.Fatalf("aborted transfer: failed %v, deliveries %v; want failed, none", snap.failed, snap.deliveries)
			}
			line := ts.log.WaitFor(t, 10*time.Second, "rcpt=alice@example.test")
			if !strings.Contains(line, "from=sender@x.test") || !strings.Contains(line, "code=451") {
				t.Errorf("the aborted delivery's log line lost its envelope or answer: %s", line)
			}
			// Released once the delivery ended: alice can be taken, once.
			retryRcpt(t, other, "alice released after the aborted delivery")
			ts.session(t).exchange(envelope("sender@x.test", "alice@example.test"), "250 ", "451 4.3.0 ")
		})
	}
}
