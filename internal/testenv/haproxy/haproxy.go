// Package haproxy runs a private HAProxy for integration tests and the lab:
// the caller's haproxy.cfg text, checked with "haproxy -c", then HAProxy in
// the foreground ("haproxy -db -f"), a child of the caller, until one of
// the configuration's frontends accepts a connection.
//
// It never touches the system's HAProxy or /etc/haproxy: the daemon gets
// its own configuration file, and Stop ends only the process it started,
// by its PID. Start is plain Go (for the lab and benchmarks); StartT is its
// testing wrapper, where a missing haproxy (Debian package haproxy) fails
// the test under CI=true and skips it elsewhere (testenv.Require).
package haproxy

import (
	"context"
	"errors"
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
)

// Package is the Debian package that holds haproxy.
const Package = "haproxy"

// Options describes the instance. Config and Ready are required.
type Options struct {
	// Config is haproxy.cfg's text.
	Config string
	// Ready are addresses ("host:port") of the configuration's frontends:
	// Start returns once each accepts a connection. HAProxy binds every
	// frontend before it accepts on any, so one is enough; the probe
	// connection is forwarded to a backend server like any other, so name
	// a frontend where an empty connection is harmless.
	Ready []string
	// Dir receives haproxy.cfg (and haproxy.log unless LogFile is set).
	// Default: a new directory under /tmp that Close removes; a Dir given
	// here is the caller's and stays.
	Dir string
	// LogFile receives HAProxy's standard output and error (appended;
	// with "log stdout" in the configuration, its traffic log too).
	LogFile string
	// Prefix is put before both haproxy command lines (the -c check and
	// the daemon), such as {"ip", "netns", "exec", NS} to run HAProxy in a
	// network namespace. It must exec haproxy, so that the PID that Stop
	// signals is HAProxy's own.
	Prefix []string
	// Dial makes the readiness connections (default: a plain dial from
	// this process). With a Prefix that moves HAProxy elsewhere, pass one
	// that dials from there.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Instance is a running private HAProxy.
type Instance struct {
	// Dir holds Conf; Conf is the haproxy.cfg HAProxy runs with.
	Dir, Conf string
	// LogFile is what HAProxy wrote to its standard output and error.
	LogFile string

	ownDir  bool // Close removes Dir
	process *os.Process
	exit    *testenv.Exit // HAProxy's end; nil before start
	mu      sync.Mutex
	stopped bool
}

// startTimeout bounds the wait for the first accepted connection.
const startTimeout = 20 * time.Second

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// Start writes opts.Config, checks it with "haproxy -c", runs HAProxy in
// the foreground and waits until every opts.Ready address accepts a
// connection (or ctx ends). A missing haproxy is testenv.ErrNotInstalled
// (wrapped). Close stops it (Stop) and removes a directory Start made.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	if len(opts.Ready) == 0 {
		return nil, errors.New("haproxy: Options.Ready names no frontend address to wait for")
	}
	paths, err := testenv.Find(Package, "haproxy")
	if err != nil {
		return nil, err
	}
	in, err := newInstance(opts)
	if err != nil {
		return nil, fmt.Errorf("haproxy: %w", err)
	}
	if err := in.run(ctx, opts, paths[0]); err != nil {
		in.Close()
		return nil, fmt.Errorf("haproxy: %w", err)
	}
	return in, nil
}

// StartT starts an instance for a test; t.Cleanup stops it. A missing
// haproxy fails the test under CI=true and skips it elsewhere.
func StartT(t testing.TB, opts Options) *Instance {
	t.Helper()
	testenv.Require(t, Package, "haproxy")
	start := func(ctx context.Context) (*Instance, error) { return Start(ctx, opts) }
	return testenv.StartPeerT(t, time.Minute, start, (*Instance).Close)
}

// newInstance makes the directory and writes the configuration.
func newInstance(opts Options) (*Instance, error) {
	in := &Instance{Dir: opts.Dir, LogFile: opts.LogFile}
	if in.Dir == "" {
		dir, err := os.MkdirTemp("/tmp", "haproxy")
		if err != nil {
			return nil, err
		}
		in.Dir, in.ownDir = dir, true
	} else if err := os.MkdirAll(in.Dir, 0o755); err != nil {
		return nil, err
	}
	if in.LogFile == "" {
		in.LogFile = filepath.Join(in.Dir, "haproxy.log")
	}
	in.Conf = filepath.Join(in.Dir, "haproxy.cfg")
	return in, os.WriteFile(in.Conf, []byte(opts.Config), 0o644)
}

// run checks the configuration, starts HAProxy and waits until it accepts.
func (in *Instance) run(ctx context.Context, opts Options, haproxy string) error {
	check := append(append([]string{}, opts.Prefix...), haproxy, "-c", "-f", in.Conf)
	if out, err := exec.CommandContext(ctx, check[0], check[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(check, " "), err, out)
	}
	daemon := append(append([]string{}, opts.Prefix...), haproxy, "-db", "-f", in.Conf)
	if err := in.start(daemon); err != nil {
		return err
	}
	dial := opts.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return in.waitAccepting(ctx, dial, opts.Ready)
}

// start runs argv with its output appended to LogFile. HAProxy gets its
// own process group (a terminal's Ctrl-C reaches only the caller, which
// stops it in order) and SIGKILL when the caller dies (testenv.StartTied).
func (in *Instance) start(argv []string) error {
	cmd, exit, err := testenv.StartLogged(argv, in.LogFile, &syscall.SysProcAttr{Setpgid: true})
	if err != nil {
		return err
	}
	in.exit = exit
	in.mu.Lock()
	in.process = cmd.Process
	in.mu.Unlock()
	return nil
}

// waitAccepting waits until every address accepts a connection, HAProxy
// exits, or ctx (at most startTimeout) ends.
func (in *Instance) waitAccepting(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), addrs []string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for _, addr := range addrs {
		accepts := func() error {
			c, err := dial(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}
		if err := testenv.WaitReady(ctx, in.exit, accepts); err != nil {
			return fmt.Errorf("haproxy does not accept on %s: %w\n%s", addr, err, in.Log())
		}
	}
	return nil
}

// PID is HAProxy's process id.
func (in *Instance) PID() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.process == nil {
		return 0
	}
	return in.process.Pid
}

// Process is HAProxy's process (for a caller that keeps a list of what it
// started, as the lab does for its own clean-up).
func (in *Instance) Process() *os.Process {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.process
}

// Exited is closed when HAProxy has ended.
func (in *Instance) Exited() <-chan struct{} {
	if in.exit == nil {
		return nil // not started: never closes
	}
	return in.exit.Done()
}

// Stop sends HAProxy SIGTERM (with -db, a hard stop: it closes its
// listeners and connections), waits for it up to stopGrace, then kills it.
// Calling it again does nothing.
func (in *Instance) Stop() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopped || in.process == nil {
		in.stopped = true
		return
	}
	in.stopped = true
	in.process.Signal(syscall.SIGTERM)
	select {
	case <-in.exit.Done():
		return
	case <-time.After(stopGrace):
	}
	in.process.Signal(syscall.SIGKILL)
	<-in.exit.Done()
}

// Close stops HAProxy and removes the directory Start made.
func (in *Instance) Close() {
	in.Stop()
	if in.ownDir {
		os.RemoveAll(in.Dir)
	}
}

// Log returns what HAProxy wrote to its log file so far.
func (in *Instance) Log() string {
	b, _ := os.ReadFile(in.LogFile)
	return string(b)
}
