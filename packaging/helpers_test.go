package packaging_test

// Shared by the packaging tests: the packages, built once per test process
// by build.sh (the same command a release uses), the .deb unpacked into a
// root whose usr/sbin/nfsdrop every daemon test runs, a small world
// (configuration, passwd-file, mail root) for those daemons, and tiny
// LMTP and POP3 clients.

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
)

// testVersion is the version build.sh gives the packages when neither
// NFSDROP_VERSION nor a tag on HEAD says otherwise: the file VERSION.
var testVersion = releaseVersion()

// releaseVersion reads the file VERSION at the top of the repository.
func releaseVersion() string {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "VERSION"))
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(data))
}

const (
	testCommit  = "0123456789ab"
	mailDomain  = "example.org"
	mailUser    = "alice@example.org"
	mailPass    = "secret"
	mountMarker = ".nfsdrop-mounted"
)

// scratch holds everything the package's tests make once (the packages,
// the unpacked .deb); TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nfsdrop-pkgtest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scratch = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// built is the output of one build.sh run.
type built struct {
	deb, rpm string
	// root is the .deb unpacked with dpkg-deb -x.
	root string
	// bin is root/usr/sbin/nfsdrop: the packaged binary.
	bin string
}

var (
	buildOnce sync.Once
	buildRes  *built
	buildErr  error
)

// packages runs packaging/build.sh once per test process.
func packages(t testing.TB) *built {
	t.Helper()
	testenv.Require(t, "dpkg", "dpkg-deb")
	testenv.Require(t, "bash", "bash")
	buildOnce.Do(func() {
		out := filepath.Join(scratch, "dist")
		cmd := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "packaging", "build.sh"), "-o", out)
		// No NFSDROP_VERSION: the version comes from the file VERSION,
		// as in a release build.
		cmd.Env = append(os.Environ(), "NFSDROP_COMMIT="+testCommit)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		if err != nil {
			buildErr = fmt.Errorf("build.sh: %v\n%s", err, stderr.String())
			return
		}
		b := &built{}
		for _, line := range strings.Fields(string(stdout)) {
			switch {
			case strings.HasSuffix(line, ".deb"):
				b.deb = line
			case strings.HasSuffix(line, ".rpm"):
				b.rpm = line
			}
		}
		if b.deb == "" || b.rpm == "" {
			buildErr = fmt.Errorf("build.sh printed no .deb and .rpm paths: %q\n%s", stdout, stderr.String())
			return
		}
		b.root = filepath.Join(scratch, "debroot")
		if out, err := exec.Command("dpkg-deb", "-x", b.deb, b.root).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("dpkg-deb -x: %v\n%s", err, out)
			return
		}
		b.bin = filepath.Join(b.root, "usr", "sbin", "nfsdrop")
		buildRes = b
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildRes
}

// repoFile reads a file of the repository.
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// run runs a command and fails the test, showing its output, when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// world is a directory with a configuration, a passwd-file holding
// alice@example.org and a mail root with its mount marker. Every directory
// is searchable by others, so that Postfix's pipe(8) can run nfsdrop
// deliver as another user.
type world struct {
	t    testing.TB
	dir  string
	root string // mail root
	cfg  string
}

// conf is what differs between the configurations of the tests.
type conf struct {
	lmtpListen                []string
	pop3Listen, pop3ListenTLS []string
	tlsCert, tlsKey           string
	proxyNetworks             []string
	allowPlaintext            bool
	worldWritableRoot         bool
}

func newWorld(t testing.TB, c conf) *world {
	t.Helper()
	w := &world{t: t, dir: testenv.ShortTempDir(t)}
	if err := os.Chmod(w.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w.root = filepath.Join(w.dir, "mail")
	mode := os.FileMode(0o755)
	if c.worldWritableRoot {
		mode = 0o1777
	}
	if err := os.Mkdir(w.root, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(w.root, mode); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(w.root, mountMarker), "", 0o644)
	writeFile(t, filepath.Join(w.dir, "users"), mailUser+":{PLAIN}"+mailPass+"::::::\n", 0o644)
	w.configure(c)
	return w
}

// configure (re)writes the configuration.
func (w *world) configure(c conf) {
	w.t.Helper()
	if len(c.lmtpListen) == 0 {
		c.lmtpListen = []string{"unix:" + filepath.Join(w.dir, "unused-lmtp")}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hostname = %q\n\n[log]\nlevel = \"info\"\n\n", "pkgtest")
	fmt.Fprintf(&b, "[store]\nmail_root = %q\nmount_marker = %q\n\n", w.root, mountMarker)
	fmt.Fprintf(&b, "[userdb]\npasswd_file = %q\n\n", filepath.Join(w.dir, "users"))
	fmt.Fprintf(&b, "[lmtp]\nlisten = %s\n\n", tomlList(c.lmtpListen))
	fmt.Fprintf(&b, "[pop3]\nlisten = %s\nlisten_tls = %s\n", tomlList(c.pop3Listen), tomlList(c.pop3ListenTLS))
	if c.tlsCert != "" {
		fmt.Fprintf(&b, "tls_cert = %q\ntls_key = %q\n", c.tlsCert, c.tlsKey)
	}
	fmt.Fprintf(&b, "allow_plaintext = %v\nproxy_networks = %s\n", c.allowPlaintext, tomlList(c.proxyNetworks))
	w.cfg = filepath.Join(w.dir, "nfsdrop.toml")
	writeFile(w.t, w.cfg, b.String(), 0o644)
}

func tomlList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func writeFile(t testing.TB, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// maildir is alice's Maildir (the passwd-file entry has no home).
func (w *world) maildir() string {
	return filepath.Join(w.root, mailDomain, "alice", "Maildir")
}

// waitMessages waits until alice's new/ holds n messages and returns their
// contents.
func (w *world) waitMessages(n int, timeout time.Duration) []string {
	w.t.Helper()
	dir := filepath.Join(w.maildir(), "new")
	var entries []os.DirEntry
	testkit.Eventually(w.t, timeout, func() bool {
		entries, _ = os.ReadDir(dir)
		return len(entries) >= n
	}, func() string { return fmt.Sprintf("%d of %d messages in %s", len(entries), n, dir) })
	var out []string
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, string(data))
	}
	return out
}

// makeCert writes a self-signed certificate for localhost.
func makeCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	return testkit.CertFiles(t, dir)
}

// proc is a daemon started by a test; its output goes to a log file.
type proc struct {
	t   testing.TB
	cmd *exec.Cmd
	log string
}

// start starts a daemon in its own process group; t.Cleanup kills the
// group by the process's own PID.
func start(t testing.TB, logFile string, env []string, name string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cleanEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	f.Close()
	p := &proc{t: t, cmd: cmd, log: logFile}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			data, _ := os.ReadFile(logFile)
			t.Logf("%s log:\n%s", filepath.Base(name), data)
		}
	})
	return p
}

// cleanEnv is the environment without socket activation or notification
// variables the test process may have inherited.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LISTEN_") || k == "NOTIFY_SOCKET" || k == "WATCHDOG_USEC" || k == "NFSDROP_CONFIG" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Log returns the daemon's output so far.
func (p *proc) Log() string {
	data, _ := os.ReadFile(p.log)
	return string(data)
}

// waitLog waits for a log line containing every one of subs.
func (p *proc) waitLog(timeout time.Duration, subs ...string) string {
	p.t.Helper()
	var line string
	testkit.Eventually(p.t, timeout, func() bool {
		var ok bool
		line, ok = testkit.LineWith(p.Log(), subs...)
		return ok
	}, func() string { return fmt.Sprintf("no log line has %q; log:\n%s", subs, p.Log()) })
	return line
}

// dialRetry connects to network/addr, retrying while the listener is not
// there yet.
func dialRetry(t testing.TB, network, addr string, timeout time.Duration) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	testkit.Eventually(t, timeout, func() bool {
		c, err = net.DialTimeout(network, addr, time.Second)
		return err == nil
	}, func() string { return fmt.Sprintf("connecting to %s %s: %v", network, addr, err) })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// lineConn is a line-oriented client connection (testkit.LineConn under
// this file's names).
type lineConn struct{ *testkit.LineConn }

func newLineConn(t testing.TB, c net.Conn) *lineConn {
	return &lineConn{testkit.NewLineConn(t, c)}
}

func (l *lineConn) send(line string)            { l.T.Helper(); l.Send(line) }
func (l *lineConn) expect(prefix string) string { l.T.Helper(); return l.Expect(prefix) }

// expectReply reads an SMTP/LMTP reply (continuation lines "250-...")
// and checks its code.
func (l *lineConn) expectReply(code string) { l.T.Helper(); l.ExpectReply(code) }

// lmtpDeliver delivers one message to alice over an open LMTP connection.
func lmtpDeliver(t testing.TB, c net.Conn, subject string) {
	t.Helper()
	l := newLineConn(t, c)
	defer c.Close()
	l.expectReply("220")
	l.send("LHLO test.example")
	l.expectReply("250")
	l.send("MAIL FROM:<sender@example.net>")
	l.expectReply("250")
	l.send("RCPT TO:<" + mailUser + ">")
	l.expectReply("250")
	l.send("DATA")
	l.expectReply("354")
	l.send("From: sender@example.net\r\nTo: " + mailUser + "\r\nSubject: " + subject + "\r\n\r\nhello\r\n.")
	l.expectReply("250")
	l.send("QUIT")
	l.expectReply("221")
}

// pop3Login logs alice in over an open POP3 connection, reads STAT and
// quits. It returns the number of messages.
func pop3Login(t testing.TB, c net.Conn) string {
	t.Helper()
	l := newLineConn(t, c)
	defer c.Close()
	l.expect("+OK")
	l.send("USER " + mailUser)
	l.expect("+OK")
	l.send("PASS " + mailPass)
	l.expect("+OK")
	l.send("STAT")
	stat := l.expect("+OK")
	l.send("QUIT")
	l.expect("+OK")
	return stat
}

// tlsClient wraps c in TLS without verification (the certificate is the
// test's own, self-signed).
func tlsClient(c net.Conn) net.Conn {
	return tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
}
