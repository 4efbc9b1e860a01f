// Package testenv is shared by the integration tests: finding real peers
// (Postfix, slapd, clamd, HAProxy, ...), building the nfsdrop binary once,
// and picking free loopback ports.
//
// A test whose peer is missing fails under CI=true (CI must prove what a
// user gets, never skip silently) and is skipped elsewhere with a message
// naming the package to install (./test.sh installs them all).
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CI reports whether the tests run under CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// ErrNotInstalled is wrapped by Find (and the peers' Start) when a program
// a peer needs is missing, so that a caller outside a test (a benchmark,
// the lab) can tell "install it" from "it failed".
var ErrNotInstalled = errors.New("not installed")

// Find looks each program up in PATH (and /usr/sbin, /usr/lib/postfix/sbin)
// and returns their paths; a missing one is ErrNotInstalled (wrapped, with
// the Debian package to install).
func Find(pkg string, programs ...string) ([]string, error) {
	var paths []string
	for _, p := range programs {
		path, err := LookPath(p)
		if err != nil {
			return nil, fmt.Errorf("%s %w (Debian package %s; ./test.sh installs it)", p, ErrNotInstalled, pkg)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// Require is Find for tests: a missing program fails the test under CI
// and skips it otherwise.
func Require(t testing.TB, pkg string, programs ...string) []string {
	t.Helper()
	paths, err := Find(pkg, programs...)
	if err != nil {
		if CI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return paths
}

// RequireRoot fails under CI and skips elsewhere when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if CI() {
			t.Fatal("this test needs root (CI runs as root)")
		}
		t.Skip("needs root")
	}
}

// LookPath is exec.LookPath that also searches the sbin directories
// Postfix and others install into.
func LookPath(p string) (string, error) {
	if path, err := exec.LookPath(p); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/lib/postfix/sbin", "/usr/lib/dovecot"} {
		c := filepath.Join(dir, p)
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return exec.LookPath(p)
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildOut  []byte
)

// Binary builds cmd/nfsdrop once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nfsdrop-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "nfsdrop")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/nfsdrop")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building nfsdrop: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := FreeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// FreeLoopbackPort is FreePort outside a test.
func FreeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ShortTempDir makes a temporary directory with a short path (Unix socket
// paths are limited to 108 bytes, and t.TempDir() paths are long).
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "nd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Contains reports whether s contains every one of subs.
func Contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Exit reports the end of a process started by StartTied.
type Exit struct {
	done chan struct{}
	err  error
}

// Done is closed when the process has ended.
func (e *Exit) Done() <-chan struct{} { return e.done }

// Err is cmd.Wait's error; valid once Done is closed.
func (e *Exit) Err() error { return e.err }

// StartTied starts cmd tied to this process: the kernel kills it
// (SIGKILL) when this process dies, so that a killed test, benchmark or
// lab leaves no daemon holding its ports. A goroutine waits for it.
//
// The parent-death signal fires when the thread that forked exits, not
// the process: the fork happens on a locked OS thread that lives as long
// as the goroutine waiting for the child. (It does not survive a change
// of user: a program started through setpriv needs its --pdeathsig.)
func StartTied(cmd *exec.Cmd) (*Exit, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	e := &Exit{done: make(chan struct{})}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		e.err = cmd.Wait()
		close(e.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return e, nil
}

// StartLogged starts argv tied to this process (StartTied) with its
// stdout and stderr appended to logFile. attr, if not nil, is the
// command's SysProcAttr (StartTied adds the parent-death signal).
func StartLogged(argv []string, logFile string, attr *syscall.SysProcAttr) (*exec.Cmd, *Exit, error) {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = attr
	exit, err := StartTied(cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", strings.Join(argv, " "), err)
	}
	return cmd, exit, nil
}

// WaitReady calls ready every 20 ms until it returns nil. It fails when
// the process ends first (exited at start), or with ready's last error
// when ctx ends; the caller adds the peer's name and log.
func WaitReady(ctx context.Context, exit *Exit, ready func() error) error {
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-exit.Done():
			return fmt.Errorf("exited at start (%v)", exit.Err())
		case <-ctx.Done():
			return fmt.Errorf("%w (last try: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Logs reads a peer's log file and the file its stdout and stderr went to
// (errors before the log is open), the second under a heading naming it.
func Logs(name, logFile, outFile string) string {
	b, _ := os.ReadFile(logFile)
	out, _ := os.ReadFile(outFile)
	return string(b) + "--- " + name + "'s stdout and stderr:\n" + string(out)
}

// StartPeerT is the body of each peer's StartT: start (a peer's plain-Go
// Start) under a deadline of timeout, an error fails the test, and the
// test's clean-up runs stop. Each StartT checks Require (and RequireRoot)
// first, so that a missing program skips rather than fails outside CI.
func StartPeerT[P any](t testing.TB, timeout time.Duration, start func(context.Context) (P, error), stop func(P)) P {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	peer, err := start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(peer) })
	return peer
}
