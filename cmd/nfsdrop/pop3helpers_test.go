package main

// Helpers for the POP3 end-to-end tests in pop3d_e2e_test.go: POP3
// configurations on top of the e2e world of testhelpers_test.go, a
// self-signed certificate, daemons run from the built binary and stopped by
// PID, LMTP delivery with `nfsdrop lmtp-send`, and a small raw POP3 client
// for the multi-host test, where the test must decide exactly when a
// session stops (QUIT, or its server killed).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store"
)

const (
	pop3Domain = "example.test"
	pop3User   = "alice@example.test"
	pop3Pass   = "pw"
)

var pop3Users = []string{
	pop3User + ":{PLAIN}" + pop3Pass + "::::::",
	"bob@example.test:{PLAIN}pw::::::",
}

// newPOP3World is an e2e world whose passwd-file holds alice and bob in
// example.test. Its own configuration (e.cfg) is not used: each server
// gets one from writePOP3Config.
func newPOP3World(t testing.TB) *e2e {
	t.Helper()
	return newE2E(t, e2eOpts{users: pop3Users})
}

// pop3Maildir is the Maildir of local@example.test.
func (e *e2e) pop3Maildir(local string) string {
	return filepath.Join(e.root, pop3Domain, local, "Maildir")
}

// pop3Conf is one server's configuration.
type pop3Conf struct {
	hostname string
	// lmtp is the LMTP TCP address ("" leaves an unused Unix socket).
	lmtp string
	// listen and listenTLS are POP3 addresses ("" for none).
	listen, listenTLS string
	// cert and key turn TLS on.
	cert, key      string
	stls           bool
	allowPlaintext bool
	trusted        []string
	lockStale      string
	authFailDelay  string
	// uidlFormat is pop3.uidl_format ("" leaves the default).
	uidlFormat string
	moveToCur  bool
}

// writePOP3Config writes c as <dir>/<name>.toml and returns its path.
func (e *e2e) writePOP3Config(name string, c pop3Conf) string {
	e.t.Helper()
	var b strings.Builder
	if c.hostname != "" {
		fmt.Fprintf(&b, "hostname = %q\n\n", c.hostname)
	}
	fmt.Fprintf(&b, "[log]\nlevel = \"debug\"\n\n")
	fmt.Fprintf(&b, "[store]\nmail_root = %q\nmount_marker = %q\n\n", e.root, e2eMarker)
	fmt.Fprintf(&b, "[userdb]\ndriver = \"passwd-file\"\npasswd_file = %q\ndefault_domain = %q\n\n", e.users, pop3Domain)
	lmtp := "unix:" + filepath.Join(e.dir, name+"-lmtp.sock")
	if c.lmtp != "" {
		lmtp = "tcp:" + c.lmtp
	}
	fmt.Fprintf(&b, "[lmtp]\nlisten = [%q]\n\n", lmtp)
	b.WriteString("[pop3]\n")
	list := func(key, addr string) {
		if addr != "" {
			fmt.Fprintf(&b, "%s = [%q]\n", key, "tcp:"+addr)
		}
	}
	list("listen", c.listen)
	list("listen_tls", c.listenTLS)
	if c.cert != "" {
		fmt.Fprintf(&b, "tls_cert = %q\ntls_key = %q\n", c.cert, c.key)
	}
	fmt.Fprintf(&b, "stls = %v\nallow_plaintext = %v\n", c.stls, c.allowPlaintext)
	var nets []string
	for _, n := range c.trusted {
		nets = append(nets, strconv.Quote(n))
	}
	fmt.Fprintf(&b, "trusted_networks = [%s]\n", strings.Join(nets, ", "))
	if c.lockStale != "" {
		fmt.Fprintf(&b, "lock_stale = %q\n", c.lockStale)
	}
	if c.authFailDelay != "" {
		fmt.Fprintf(&b, "auth_fail_delay = %q\n", c.authFailDelay)
	}
	if c.uidlFormat != "" {
		fmt.Fprintf(&b, "uidl_format = %q\n", c.uidlFormat)
	}
	if c.moveToCur {
		b.WriteString("move_to_cur = true\n")
	}
	path := filepath.Join(e.dir, name+".toml")
	writeFile(e.t, path, []byte(b.String()))
	return path
}

// loopback returns "127.0.0.1:<free port>".
func loopback(t testing.TB) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
}

// portOf returns the port of "host:port".
func portOf(t testing.TB, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// tlsPOP3 is the world of the POP3 client tests: lmtpd and pop3d for
// mx1.test on loopback, pop3d with STLS on plain and implicit TLS on
// implicit, and the pop3TestMessages delivered to alice (stored: by file
// name).
type tlsPOP3 struct {
	*e2e
	plain, implicit string
	cert, key       string
	stored          map[string][]byte
}

// startTLSPOP3 starts a tlsPOP3; tweak, if not nil, changes pop3d's
// configuration first.
func startTLSPOP3(t *testing.T, tweak func(*pop3Conf)) tlsPOP3 {
	t.Helper()
	e := newPOP3World(t)
	w := tlsPOP3{e2e: e, plain: loopback(t), implicit: loopback(t)}
	w.cert, w.key = makeCert(t, e.dir)
	lmtpAddr := loopback(t)
	conf := pop3Conf{hostname: "mx1.test", lmtp: lmtpAddr, listen: w.plain, listenTLS: w.implicit,
		cert: w.cert, key: w.key, stls: true}
	if tweak != nil {
		tweak(&conf)
	}
	cfg := e.writePOP3Config("mx1", conf)
	e.startDaemon("lmtpd", []string{lmtpAddr}, "lmtpd", "-c", cfg)
	e.startDaemon("pop3d", []string{w.plain, w.implicit}, "pop3d", "-c", cfg)
	w.stored = deliverPOP3Messages(e, lmtpAddr)
	return w
}

// makeCert writes a self-signed ECDSA certificate for 127.0.0.1 and
// localhost, and its key, into dir.
func makeCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	return testkit.CertFiles(t, dir)
}

// proc is a server process of the built binary. It is stopped (SIGTERM,
// then SIGKILL) by its PID when the test ends; its log is shown when the
// test failed.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startDaemon runs the binary with args, logging to <dir>/<name>.log, and
// waits until every address in addrs accepts connections.
func (e *e2e) startDaemon(name string, addrs []string, args ...string) *proc {
	e.t.Helper()
	logPath := filepath.Join(e.dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(e.bin, args...)
	cmd.Dir = e.dir
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	d := &proc{t: e.t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	e.t.Cleanup(func() {
		d.stop()
		if e.t.Failed() {
			e.t.Logf("%s log:\n%s", name, tail(readFile(e.t, logPath), 8000))
		}
	})
	for _, a := range addrs {
		d.waitListening(a)
	}
	return d
}

func (d *proc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *proc) waitListening(addr string) {
	d.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if d.exited() {
			d.t.Fatalf("%s exited before listening on %s:\n%s", d.name, addr, readFile(d.t, d.log))
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s does not listen on %s: %v", d.name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the process by its PID: SIGTERM, and SIGKILL if it is still
// there after 10 seconds.
func (d *proc) stop() {
	if d.exited() {
		return
	}
	syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (d *proc) kill9() {
	d.t.Helper()
	if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.t.Fatalf("%s (pid %d) did not die from SIGKILL", d.name, d.cmd.Process.Pid)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// lmtpSendArgs are the arguments of `nfsdrop lmtp-send` for msg in file.
func lmtpSendArgs(server, rcpt, file string) []string {
	return []string{"lmtp-send", "--server", server, "--from", "sender@example.net", "--to", rcpt, "--file", file}
}

// lmtpSend sends msg to rcpt through the LMTP server at addr with
// `nfsdrop lmtp-send` and fails the test unless it was accepted.
func (e *e2e) lmtpSend(addr, rcpt string, msg []byte) {
	e.t.Helper()
	f, err := os.CreateTemp(e.dir, "msg-*.eml")
	if err != nil {
		e.t.Fatal(err)
	}
	f.Write(msg)
	f.Close()
	r := e.run(nil, nil, lmtpSendArgs(addr, rcpt, f.Name())...)
	if r.code != 0 || !strings.Contains(r.stdout, rcpt+": 250") {
		e.t.Fatalf("lmtp-send to %s: %s", rcpt, r)
	}
}

// pop3Wire is a stored message as RETR sends it, before dot-stuffing:
// every bare LF turned into CRLF, and CRLF added after a last line that has
// no line end. Its length is the RFC 1939 size LIST must report.
func pop3Wire(data []byte) []byte {
	out := make([]byte, 0, len(data)+bytes.Count(data, []byte("\n"))+2)
	for i, c := range data {
		if c == '\n' && (i == 0 || data[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	return out
}

// storedMessages maps UIDL (the Maildir base name) to the stored content
// of every message in maildir's new/ and cur/.
func storedMessages(t testing.TB, maildir string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	for _, sub := range []string{"new", "cur"} {
		for _, n := range names(t, filepath.Join(maildir, sub)) {
			out[store.BaseName(n)] = readFile(t, filepath.Join(maildir, sub, n))
		}
	}
	return out
}

// popClient is a raw POP3 client with the session steps these tests
// repeat (login, listing) on top of testkit.LineConn.
type popClient struct {
	*testkit.LineConn
	greeting string
}

// dialPOP3 connects to addr and reads the greeting.
func dialPOP3(t testing.TB, addr string) *popClient {
	t.Helper()
	p := &popClient{LineConn: testkit.Dial(t, "tcp", addr)}
	p.Timeout = 30 * time.Second
	p.greeting = p.Line()
	if !strings.HasPrefix(p.greeting, "+OK") {
		t.Fatalf("greeting from %s: %q", addr, p.greeting)
	}
	return p
}

// cmd sends line and returns the first line of the answer.
func (p *popClient) cmd(line string) string {
	p.T.Helper()
	return p.Cmd(line)
}

// multi sends line and returns the lines of a multi-line answer
// (dot-unstuffed), failing the test on -ERR.
func (p *popClient) multi(line string) []string {
	p.T.Helper()
	if first := p.cmd(line); !strings.HasPrefix(first, "+OK") {
		p.T.Fatalf("%s: %q", line, first)
	}
	return p.Multi()
}

// login sends USER and PASS and returns the answer to PASS (or to USER
// when that was refused).
func (p *popClient) login(user, pass string) string {
	p.T.Helper()
	if r := p.cmd("USER " + user); !strings.HasPrefix(r, "+OK") {
		return r
	}
	return p.cmd("PASS " + pass)
}

// mustLogin logs in and fails the test unless it worked.
func (p *popClient) mustLogin(user, pass string) {
	p.T.Helper()
	if r := p.login(user, pass); !strings.HasPrefix(r, "+OK") {
		p.T.Fatalf("login as %s: %q", user, r)
	}
}

// popMsg is one message of a session's listing.
type popMsg struct {
	num  int
	uidl string
	size int64
	id   string // its Message-ID, from TOP n 0
}

// listing reads UIDL, LIST and each message's Message-ID (TOP n 0).
func (p *popClient) listing() []popMsg {
	p.T.Helper()
	var msgs []popMsg
	for _, l := range p.multi("UIDL") {
		f := strings.Fields(l)
		if len(f) != 2 {
			p.T.Fatalf("UIDL line %q", l)
		}
		n, _ := strconv.Atoi(f[0])
		msgs = append(msgs, popMsg{num: n, uidl: f[1]})
	}
	sizes := p.multi("LIST")
	if len(sizes) != len(msgs) {
		p.T.Fatalf("LIST has %d lines, UIDL %d", len(sizes), len(msgs))
	}
	for i, l := range sizes {
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != strconv.Itoa(msgs[i].num) {
			p.T.Fatalf("LIST line %q for message %d", l, msgs[i].num)
		}
		msgs[i].size, _ = strconv.ParseInt(f[1], 10, 64)
	}
	for i := range msgs {
		for _, h := range p.multi("TOP " + strconv.Itoa(msgs[i].num) + " 0") {
			if v, ok := strings.CutPrefix(h, "Message-ID: "); ok {
				msgs[i].id = v
			}
		}
		if msgs[i].id == "" {
			p.T.Fatalf("message %d (%s) has no Message-ID", msgs[i].num, msgs[i].uidl)
		}
	}
	return msgs
}

// quit sends QUIT and returns the answer.
func (p *popClient) quit() string {
	p.T.Helper()
	r := p.cmd("QUIT")
	p.Close()
	return r
}

// runTool runs an external program with a timeout and returns its output.
func runTool(t testing.TB, stdin []byte, env []string, name string, args ...string) (stdout, stderr []byte, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("running %s %q: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, o.Bytes(), e.Bytes())
	}
	return o.Bytes(), e.Bytes(), code
}
