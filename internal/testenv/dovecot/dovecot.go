// Package dovecot runs a private Dovecot IMAP server for integration tests
// on the same Maildirs nfsdrop serves: its own dovecot.conf, base_dir,
// state_dir and log in a temporary directory, IMAP on a free loopback port,
// and passdb and userdb reading the very passwd-file nfsdrop reads (home
// field set, mail in ~/Maildir).
//
// It never touches the system's /etc/dovecot or a Dovecot already running:
// the master runs in the foreground ("dovecot -F -c CONF") as a child of the
// caller, and Stop ends only that process, by its PID (the master takes
// its own children down with it). Dovecot's master must run as root; it
// refuses uid 0 for mail, so the passwd-file entries need a non-zero uid
// and gid (TestUID and TestGID by default) and the Maildirs must belong to
// them: nfsdrop running as root chowns what it creates to the entry's
// uid/gid.
//
// Start is plain Go (usable outside tests); StartT is the testing wrapper:
// a missing dovecot (Debian package dovecot-imapd) or a test not running as
// root fails under CI=true and skips elsewhere (testenv.Require).
package dovecot

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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// TestUID and TestGID are the default uid and gid of the mail users: not
// 0 (Dovecot refuses it for mail) and not a system account.
const (
	TestUID = 5000
	TestGID = 5000
)

// Package is the Debian package providing the IMAP server.
const Package = "dovecot-imapd"

// ErrNotInstalled is returned by Start when the dovecot program is missing.
var ErrNotInstalled = errors.New("dovecot not found (Debian package " + Package + "; ./test.sh installs it)")

// Options describes the instance.
type Options struct {
	// PasswdFile is the passwd-file of passdb and userdb, in the format
	// nfsdrop reads (user:{PLAIN}password:uid:gid::home::). Required. Its
	// directory and the mail root must be reachable by Dovecot's
	// unprivileged processes (the auth process reads it as user dovecot).
	PasswdFile string
	// FirstValidUID and LastValidUID bound the mail users' uids (Dovecot's
	// first_valid_uid, last_valid_uid). Defaults TestUID and
	// FirstValidUID. FirstValidGID and LastValidGID likewise, defaults
	// TestGID and FirstValidGID.
	FirstValidUID, LastValidUID int
	FirstValidGID, LastValidGID int
	// MailLocation is mail_location. Default "maildir:~/Maildir", the
	// Maildir nfsdrop uses under a home (store.maildir_name "Maildir").
	MailLocation string
	// Dir is where the instance keeps its configuration, runtime
	// directory, state and log; "" makes a temporary directory that Stop
	// removes.
	Dir string
	// Extra dovecot.conf lines, written last (for example
	// "mail_debug = yes").
	Extra []string
}

func (o *Options) defaults() {
	if o.FirstValidUID == 0 {
		o.FirstValidUID = TestUID
	}
	if o.LastValidUID == 0 {
		o.LastValidUID = o.FirstValidUID
	}
	if o.FirstValidGID == 0 {
		o.FirstValidGID = TestGID
	}
	if o.LastValidGID == 0 {
		o.LastValidGID = o.FirstValidGID
	}
	if o.MailLocation == "" {
		o.MailLocation = "maildir:~/Maildir"
	}
}

// Instance is a running private Dovecot.
type Instance struct {
	// Dir holds ConfigFile, the base_dir ("run"), the state_dir ("state")
	// and LogFile.
	Dir        string
	ConfigFile string
	LogFile    string
	// Addr is the IMAP listener, "127.0.0.1:PORT".
	Addr string

	program string
	ownDir  bool
	cmd     *exec.Cmd
	exit    *testenv.Exit // nil before start
	mu      sync.Mutex
	stopped bool
}

// Start writes the configuration, starts the master and waits until the
// IMAP listener greets, or ctx ends. It returns ErrNotInstalled (wrapped)
// when dovecot is missing.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	opts.defaults()
	if opts.PasswdFile == "" {
		return nil, errors.New("dovecot.Start: Options.PasswdFile is empty")
	}
	program, err := testenv.LookPath("dovecot")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("dovecot.Start: the master must run as root")
	}
	in := &Instance{Dir: opts.Dir, program: program}
	if in.Dir == "" {
		// Short (Unix socket paths in base_dir are limited to 108 bytes)
		// and reachable by Dovecot's unprivileged processes.
		if in.Dir, err = os.MkdirTemp("/tmp", "dovecot"); err != nil {
			return nil, err
		}
		in.ownDir = true
	}
	if err := in.prepare(opts); err != nil {
		in.removeDir()
		return nil, err
	}
	if err := in.start(ctx); err != nil {
		in.Stop()
		return nil, err
	}
	return in, nil
}

// StartT starts an instance for a test; t.Cleanup stops it and shows its
// log when the test failed. A missing dovecot, or a test not running as
// root, fails under CI=true and skips elsewhere.
func StartT(t testing.TB, opts Options) *Instance {
	t.Helper()
	testenv.Require(t, Package, "dovecot")
	testenv.RequireRoot(t)
	start := func(ctx context.Context) (*Instance, error) { return Start(ctx, opts) }
	return testenv.StartPeerT(t, time.Minute, start, func(in *Instance) {
		if t.Failed() {
			t.Logf("dovecot log:\n%s", tail(in.Log(), 8000))
		}
		in.Stop()
	})
}

// prepare makes the directories and writes dovecot.conf.
func (in *Instance) prepare(opts Options) error {
	// Login and auth processes run as dovenull and dovecot: every
	// directory they pass must be searchable.
	if err := os.Chmod(in.Dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(in.Dir, d), 0o755); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	in.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	in.LogFile = filepath.Join(in.Dir, "dovecot.log")
	in.ConfigFile = filepath.Join(in.Dir, "dovecot.conf")
	return os.WriteFile(in.ConfigFile, []byte(in.config(opts, port)), 0o644)
}

// config is dovecot.conf: IMAP only, no TLS, plaintext logins allowed on
// loopback, users from the passwd-file.
func (in *Instance) config(opts Options, port int) string {
	lines := []string{
		"protocols = imap",
		"listen = 127.0.0.1",
		"base_dir = " + filepath.Join(in.Dir, "run"),
		"state_dir = " + filepath.Join(in.Dir, "state"),
		"instance_name = nfsdrop-test-" + filepath.Base(in.Dir),
		"log_path = " + in.LogFile,
		"ssl = no",
		"disable_plaintext_auth = no",
		"auth_mechanisms = plain login",
		"first_valid_uid = " + strconv.Itoa(opts.FirstValidUID),
		"last_valid_uid = " + strconv.Itoa(opts.LastValidUID),
		"first_valid_gid = " + strconv.Itoa(opts.FirstValidGID),
		"last_valid_gid = " + strconv.Itoa(opts.LastValidGID),
		"mail_location = " + opts.MailLocation,
		"passdb {",
		"  driver = passwd-file",
		"  args = scheme=PLAIN username_format=%u " + opts.PasswdFile,
		"}",
		"userdb {",
		"  driver = passwd-file",
		"  args = username_format=%u " + opts.PasswdFile,
		"}",
		"service imap-login {",
		"  inet_listener imap {",
		"    port = " + strconv.Itoa(port),
		"  }",
		"  inet_listener imaps {",
		"    port = 0",
		"  }",
		"}",
		"protocol lda {",
		"  postmaster_address = postmaster@example.test",
		"}",
	}
	lines = append(lines, opts.Extra...)
	return strings.Join(lines, "\n") + "\n"
}

// start runs the master in the foreground and waits for the greeting.
func (in *Instance) start(ctx context.Context) error {
	cmd, exit, err := testenv.StartLogged([]string{in.program, "-F", "-c", in.ConfigFile}, in.outFile(), nil)
	if err != nil {
		return err
	}
	in.cmd, in.exit = cmd, exit
	if err := testenv.WaitReady(ctx, exit, in.greets); err != nil {
		return fmt.Errorf("dovecot did not greet on %s: %w\n%s", in.Addr, err, in.Log())
	}
	return nil
}

// greets connects to the IMAP listener and expects "* OK".
func (in *Instance) greets() error {
	c, err := net.DialTimeout("tcp", in.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if !bytes.HasPrefix(buf[:n], []byte("* OK")) {
		return fmt.Errorf("greeting %q, %v", buf[:n], err)
	}
	return nil
}

// PID is the master's process id.
func (in *Instance) PID() int { return in.cmd.Process.Pid }

// Stop ends the master by its PID (SIGTERM, SIGKILL after 10 seconds),
// waits for it and removes a directory Start made. Calling it again does
// nothing.
func (in *Instance) Stop() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopped {
		return
	}
	in.stopped = true
	if in.cmd != nil && in.cmd.Process != nil {
		syscall.Kill(in.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-in.exit.Done():
		case <-time.After(10 * time.Second):
			syscall.Kill(in.cmd.Process.Pid, syscall.SIGKILL)
			<-in.exit.Done()
		}
	}
	in.removeDir()
}

func (in *Instance) removeDir() {
	if in.ownDir {
		os.RemoveAll(in.Dir)
	}
}

// Log returns Dovecot's log so far and what the master wrote to stdout
// and stderr (errors before the log is open).
func (in *Instance) Log() string {
	return testenv.Logs("dovecot", in.LogFile, in.outFile())
}

func (in *Instance) outFile() string { return filepath.Join(in.Dir, "dovecot.out") }

// Deliver stores msg in user's INBOX with Dovecot's own LDA (dovecot-lda
// -d user), as a server being replaced by nfsdrop would have: the file
// gets Dovecot's name and a line in dovecot-uidlist.
func (in *Instance) Deliver(ctx context.Context, user string, msg []byte) error {
	lda, err := testenv.LookPath("dovecot-lda")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	cmd := exec.CommandContext(ctx, lda, "-c", in.ConfigFile, "-d", user, "-f", "sender@example.net")
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dovecot-lda -d %s: %w\n%s", user, err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
