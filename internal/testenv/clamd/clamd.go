// Package clamd runs a private ClamAV clamd for integration tests: its own
// configuration, a database holding one test signature made from the EICAR
// string (no downloads, ready in a fraction of a second), a Unix socket and
// a loopback TCP port, all in a temporary directory.
//
// It never touches the system's clamd or its configuration. The daemon runs
// in the foreground as a child of the caller, as the clamav user (through
// setpriv) when running as root and as the caller's own user otherwise,
// and is killed by its PID by Close (StartT: when the test ends). Start is
// plain Go (for benchmarks and the lab); StartT is its testing wrapper,
// where a missing clamd (Debian package clamav-daemon) fails the test
// under CI=true and skips it elsewhere (testenv.Require).
package clamd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// EICAR is the EICAR anti-virus test file (68 bytes). The private database
// has one signature, named Signature, that matches it anywhere in a
// stream, including inside a decoded MIME attachment (ScanMail is on).
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// Signature is the name clamd reports for EICAR with the private database
// (an .ndb signature "Test.EICAR" gets the suffix ".UNOFFICIAL").
const Signature = "Test.EICAR.UNOFFICIAL"

// Options describes the instance.
type Options struct {
	// StreamMaxLength is clamd.conf's StreamMaxLength, in clamd's syntax
	// ("1M", "25M", "1048576"). Default "25M", clamd's own default.
	StreamMaxLength string
	// Extra clamd.conf lines, written last.
	Extra []string
}

// Instance is a running private clamd.
type Instance struct {
	// Dir holds the configuration, database, socket, log and temporary
	// files; it is removed when the test ends.
	Dir string
	// Socket is the path of the Unix socket, TCP the loopback "host:port".
	Socket, TCP string
	// LogFile is clamd's log.
	LogFile string

	cmd     *exec.Cmd
	mu      sync.Mutex
	stopped bool
	exit    *testenv.Exit // nil before start
}

// Package is the Debian package that holds clamd.
const Package = "clamav-daemon"

// startTimeout bounds the wait for clamd's first PONG.
const startTimeout = 30 * time.Second

// Start writes the configuration and database into a new directory under
// /tmp, starts clamd and waits until it answers PING (or ctx ends). A
// missing clamd is testenv.ErrNotInstalled (wrapped). Close kills it and
// removes the directory.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	paths, err := testenv.Find(Package, "clamd")
	if err != nil {
		return nil, err
	}
	if opts.StreamMaxLength == "" {
		opts.StreamMaxLength = "25M"
	}
	dir, err := os.MkdirTemp("/tmp", "nd") // Unix socket paths are short
	if err != nil {
		return nil, err
	}
	in := &Instance{
		Dir:     dir,
		Socket:  filepath.Join(dir, "clamd.sock"),
		LogFile: filepath.Join(dir, "clamd.log"),
	}
	args, err := in.prepare(opts, paths[0])
	if err == nil {
		err = in.start(ctx, args)
	}
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("clamd: %w", err)
	}
	return in, nil
}

// StartT starts an instance for a test; t.Cleanup kills it and removes
// its directory. A missing clamd fails the test under CI=true and skips it
// elsewhere.
func StartT(t testing.TB, opts Options) *Instance {
	t.Helper()
	testenv.Require(t, Package, "clamd")
	start := func(ctx context.Context) (*Instance, error) { return Start(ctx, opts) }
	return testenv.StartPeerT(t, time.Minute, start, (*Instance).Close)
}

// Close kills clamd and removes its directory.
func (in *Instance) Close() {
	in.Kill()
	os.RemoveAll(in.Dir)
}

// prepare writes the database and clamd.conf, and returns the command
// line (through setpriv as the clamav user when running as root).
func (in *Instance) prepare(opts Options, clamd string) ([]string, error) {
	port, err := testenv.FreeLoopbackPort()
	if err != nil {
		return nil, err
	}
	in.TCP = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	db := filepath.Join(in.Dir, "db")
	tmp := filepath.Join(in.Dir, "tmp")
	for _, d := range []string{db, tmp} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	// One signature: "Name:TargetType(0 = any):Offset(* = anywhere):hex".
	sig := fmt.Sprintf("Test.EICAR:0:*:%x\n", EICAR)
	if err := os.WriteFile(filepath.Join(db, "test.ndb"), []byte(sig), 0o644); err != nil {
		return nil, err
	}
	conf := []string{
		"LocalSocket " + in.Socket,
		"LocalSocketMode 666",
		"TCPSocket " + strconv.Itoa(port),
		"TCPAddr 127.0.0.1",
		"DatabaseDirectory " + db,
		"Foreground yes",
		"StreamMaxLength " + opts.StreamMaxLength,
		"ScanMail yes",
		"LogFile " + in.LogFile,
		"LogTime yes",
		"PidFile " + filepath.Join(in.Dir, "clamd.pid"),
		"TemporaryDirectory " + tmp,
		"SelfCheck 0",
	}
	conf = append(conf, opts.Extra...)
	confPath := filepath.Join(in.Dir, "clamd.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	args := []string{clamd, "--config-file=" + confPath}
	if os.Geteuid() != 0 {
		return args, nil
	}
	return in.asClamav(args)
}

// asClamav hands the directory to the clamav user and prefixes args with
// setpriv, as Debian's package runs clamd.
func (in *Instance) asClamav(args []string) ([]string, error) {
	u, err := user.Lookup("clamav")
	if err != nil {
		return nil, fmt.Errorf("no clamav user: %w", err)
	}
	setpriv, err := testenv.LookPath("setpriv")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	err = filepath.Walk(in.Dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return nil, err
	}
	// --pdeathsig: changing user clears a parent-death signal set before
	// (start's), so setpriv sets it again after.
	return append([]string{setpriv, "--reuid", u.Uid, "--regid", u.Gid, "--clear-groups", "--pdeathsig", "KILL", "--"}, args...), nil
}

// start runs clamd and waits for its first PONG.
func (in *Instance) start(ctx context.Context, args []string) error {
	// Errors before clamd opens its log (a bad clamd.conf) go to stderr.
	// If the caller dies without Close (a test binary's timeout panic, a
	// killed bench/load peer), clamd dies with it rather than linger.
	cmd, exit, err := testenv.StartLogged(args, in.outFile(), nil)
	if err != nil {
		return err
	}
	in.cmd, in.exit = cmd, exit
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := testenv.WaitReady(ctx, exit, in.ping); err != nil {
		return fmt.Errorf("clamd did not answer PING: %w\n%s", err, in.Log())
	}
	return nil
}

// Addresses returns the instance's addresses in nfsdrop's syntax: the Unix
// socket first, then the TCP port.
func (in *Instance) Addresses() []string {
	return []string{in.UnixAddress(), in.TCPAddress()}
}

// UnixAddress is "unix:" + Socket.
func (in *Instance) UnixAddress() string { return "unix:" + in.Socket }

// TCPAddress is "tcp:" + TCP.
func (in *Instance) TCPAddress() string { return "tcp:" + in.TCP }

// PID is the process id of clamd.
func (in *Instance) PID() int { return in.cmd.Process.Pid }

// Kill kills clamd with SIGKILL (which also ends a stopped clamd) and waits
// until it is gone; the socket file stays, so that connecting to it is
// refused, like a crashed clamd. Calling it again does nothing.
func (in *Instance) Kill() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopped {
		return
	}
	in.stopped = true
	if in.cmd == nil { // never started
		return
	}
	in.cmd.Process.Signal(syscall.SIGKILL)
	<-in.exit.Done()
}

// Stop sends SIGSTOP: clamd freezes, while the kernel still accepts
// connections on its sockets (a hung clamd). Cont undoes it.
func (in *Instance) Stop() { in.signal(syscall.SIGSTOP) }

// Cont sends SIGCONT.
func (in *Instance) Cont() { in.signal(syscall.SIGCONT) }

func (in *Instance) signal(sig syscall.Signal) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.stopped && in.cmd != nil {
		in.cmd.Process.Signal(sig)
	}
}

// Log returns clamd's log so far, and what it wrote to stderr.
func (in *Instance) Log() string {
	return testenv.Logs("clamd", in.LogFile, in.outFile())
}

func (in *Instance) outFile() string { return filepath.Join(in.Dir, "clamd.out") }

// ping sends zPING on the Unix socket and expects PONG.
func (in *Instance) ping() error {
	c, err := net.DialTimeout("unix", in.Socket, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("zPING\x00")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if got := buf[:n]; !bytes.Equal(got, []byte("PONG\x00")) {
		return fmt.Errorf("PING: reply %q, %v", got, err)
	}
	return nil
}
