package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// fakeMsg is a message of the fake mailbox: data as stored (bare LF or
// CRLF), or gen bytes of generated bare-LF lines when gen > 0.
type fakeMsg struct {
	data string
	gen  int64
	uid  string
}

// crlfSize is the size RFC 1939 LIST reports: line ends as CRLF, and the
// CRLF that RETR adds to a last line without one.
func crlfSize(data string) int64 {
	n := int64(len(data))
	if data != "" && !strings.HasSuffix(data, "\n") {
		n += 2
	}
	for i := 0; i < len(data); i++ {
		if data[i] == '\n' && (i == 0 || data[i-1] != '\r') {
			n++
		}
	}
	return n
}

const genLine = 100 // generated lines: 99 'x' and LF

func (m fakeMsg) size() int64 {
	if m.gen > 0 {
		return m.gen + m.gen/genLine
	}
	return crlfSize(m.data)
}

func (m fakeMsg) open() io.Reader {
	if m.gen > 0 {
		return &genReader{left: m.gen}
	}
	return strings.NewReader(m.data)
}

// genReader yields left bytes of "xxx...x\n" lines without holding them.
type genReader struct{ left, off int64 }

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		if g.off%genLine == genLine-1 {
			p[n] = '\n'
		} else {
			p[n] = 'x'
		}
		n++
		g.off++
		g.left--
	}
	return n, nil
}

type fakeBackend struct {
	mu       sync.Mutex
	users    map[string]string // name → password
	errs     map[string]error  // name → forced Login error
	messages []fakeMsg
	clients  []Client
	boxes    []*fakeMailbox

	openErr   error
	readErr   error
	panicOpen bool
	commitErr error
}

func newFakeBackend(msgs ...fakeMsg) *fakeBackend {
	return &fakeBackend{
		users:    map[string]string{"alice": "secret word", "bob": "hunter2"},
		errs:     map[string]error{},
		messages: msgs,
	}
}

func (b *fakeBackend) Login(_ context.Context, c Client, user, pass string) (Mailbox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clients = append(b.clients, c)
	if err := b.errs[user]; err != nil {
		return nil, err
	}
	if p, ok := b.users[user]; !ok {
		return nil, failure.New(failure.NotFound, "lookup", "no such user", nil)
	} else if p != pass {
		return nil, failure.New(failure.NotFound, "password", "wrong password", nil)
	}
	mb := &fakeMailbox{b: b, msgs: b.messages, done: make(chan struct{})}
	b.boxes = append(b.boxes, mb)
	return mb, nil
}

func (b *fakeBackend) lastClient(t *testing.T) Client {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.clients) == 0 {
		t.Fatal("backend saw no login")
	}
	return b.clients[len(b.clients)-1]
}

func (b *fakeBackend) box(t *testing.T, i int) *fakeMailbox {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if i >= len(b.boxes) {
		t.Fatalf("backend opened %d mailboxes, want more than %d", len(b.boxes), i)
	}
	return b.boxes[i]
}

type fakeMailbox struct {
	b    *fakeBackend
	msgs []fakeMsg
	done chan struct{} // closed by Commit or Close
	once sync.Once

	mu                 sync.Mutex
	committed, closed  int
	deleted, retrieved []int
}

func (m *fakeMailbox) Len() int { return len(m.msgs) }

func (m *fakeMailbox) Message(i int) Message {
	msg := m.msgs[i]
	uid := msg.uid
	if uid == "" {
		uid = "uid" + string(rune('a'+i))
	}
	return Message{Size: msg.size(), UID: uid}
}

func (m *fakeMailbox) Open(i int) (io.ReadCloser, error) {
	if m.b.panicOpen {
		panic("fake backend: open exploded")
	}
	if m.b.openErr != nil {
		return nil, m.b.openErr
	}
	r := m.msgs[i].open()
	if m.b.readErr != nil {
		r = io.MultiReader(io.LimitReader(r, 10), errReader{m.b.readErr})
	}
	return io.NopCloser(r), nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (m *fakeMailbox) Commit(deleted, retrieved []int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.committed++
	m.deleted, m.retrieved = deleted, retrieved
	m.once.Do(func() { close(m.done) })
	return m.b.commitErr
}

func (m *fakeMailbox) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed++
	m.once.Do(func() { close(m.done) })
	return nil
}

// wait waits for Commit or Close and returns how many times each ran.
func (m *fakeMailbox) wait(t *testing.T) (committed, closed int) {
	t.Helper()
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		t.Fatal("mailbox neither committed nor closed")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.committed, m.closed
}

// ended waits for the session to end and checks how: committed (QUIT)
// or closed without committing, this many times each.
func (m *fakeMailbox) ended(t *testing.T, committed, closed int) {
	t.Helper()
	if gotCommitted, gotClosed := m.wait(t); gotCommitted != committed || gotClosed != closed {
		t.Fatalf("commit %d close %d, want %d %d", gotCommitted, gotClosed, committed, closed)
	}
}

// logBuffer collects the server's log for checks.
type logBuffer struct{ testkit.LogBuffer }

// waitFor waits until the log has a line containing all of parts (the
// session line is written after the client sees the connection close).
func (l *logBuffer) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	return l.WaitFor(t, 10*time.Second, parts...)
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func baseOptions() Options {
	return Options{
		Hostname:        "pop.test",
		AllowPlaintext:  true,
		IdleTimeout:     10 * time.Second,
		MaxAuthFailures: 3,
	}
}

type testServer struct {
	*Server
	addr   string
	log    *logBuffer
	writes atomic.Int64 // Write calls on accepted connections
	served chan error
}

// startServer serves on a loopback port; tls selects ServeTLS.
func startServer(t *testing.T, b Backend, opts Options, implicitTLS bool, tweak ...func(*Server)) *testServer {
	t.Helper()
	ts := &testServer{log: &logBuffer{}, served: make(chan error, 1)}
	opts.Logger = newTestLogger(ts.log)
	ts.Server = New(b, opts)
	for _, f := range tweak {
		f(ts.Server)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.Addr().String()
	cl := &countingListener{Listener: l, writes: &ts.writes}
	go func() {
		if implicitTLS {
			ts.served <- ts.ServeTLS(cl)
		} else {
			ts.served <- ts.Serve(cl)
		}
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// client is a raw POP3 client: lines in, lines out. The methods forward
// to testkit.LineConn under the names this package's tests use.
type client struct{ *testkit.LineConn }

func dial(t *testing.T, addr string) *client {
	t.Helper()
	return dialFrom(t, addr, nil)
}

func dialFrom(t *testing.T, addr string, local net.Addr) *client {
	t.Helper()
	return &client{testkit.DialFrom(t, "tcp", addr, local)}
}

// dialTLS connects to an implicit-TLS listener.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) *client {
	t.Helper()
	c := dial(t, addr)
	c.startTLS(cfg)
	return c
}

func (c *client) startTLS(cfg *tls.Config) { c.T.Helper(); c.StartTLS(cfg) }
func (c *client) send(lines ...string)     { c.T.Helper(); c.Send(lines...) }
func (c *client) raw(s string)             { c.T.Helper(); c.Raw(s) }
func (c *client) line() string             { c.T.Helper(); return c.Line() }
func (c *client) expect(prefix string) string {
	c.T.Helper()
	return c.Expect(prefix)
}
func (c *client) multi() []string { c.T.Helper(); return c.Multi() }
func (c *client) body() string    { c.T.Helper(); return c.Body() }
func (c *client) eof()            { c.T.Helper(); c.ExpectEOF() }

// ask sends one command line and reads one reply line for each of want,
// each of which must start with it.
func (c *client) ask(cmd string, want ...string) {
	c.T.Helper()
	c.send(cmd)
	c.expectAll(want...)
}

// expectAll reads one line for each of want, each of which must start
// with it.
func (c *client) expectAll(want ...string) {
	c.T.Helper()
	for _, w := range want {
		c.expect(w)
	}
}

// greeted dials addr and reads the greeting.
func greeted(t *testing.T, addr string) *client {
	t.Helper()
	c := dial(t, addr)
	c.expect("+OK")
	return c
}

// aliceIn dials addr and logs alice in.
func aliceIn(t *testing.T, addr string) *client {
	t.Helper()
	c := greeted(t, addr)
	c.login("alice", "secret word")
	return c
}

func (c *client) login(user, pass string) {
	c.T.Helper()
	c.send("USER "+user, "PASS "+pass)
	c.expect("+OK")
	c.expect("+OK Logged in")
}

// testCert makes a self-signed certificate for localhost and 127.0.0.1,
// and returns the server config and a client config that trusts it.
func testCert(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	return testkit.TLSConfigs(t)
}
