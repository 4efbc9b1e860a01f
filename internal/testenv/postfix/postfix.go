// Package postfix runs a private Postfix instance for integration tests:
// its own configuration directory, queue and data directories and mail log
// in a temporary directory, no SMTP listener, delivering the test domains
// over LMTP to the transport under test.
//
// It never touches the system's /etc/postfix or a Postfix already running:
// every command gets "-c DIR" (or "-C DIR" for sendmail), and Stop ends only
// the master whose PID is in the instance's own pid file. Start needs root
// (Postfix's master runs as root and drops to mail_owner), the Postfix
// programs (Debian package postfix) and a Postfix with maillog_file (3.4 or
// later). Start is plain Go (for benchmarks and the lab); StartT is its
// testing wrapper, where a missing program fails the test under CI=true
// and skips it elsewhere (testenv.Require).
package postfix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// Options describes the instance.
type Options struct {
	// MailboxTransport is the LMTP transport under test, as Postfix writes
	// it: "lmtp:inet:127.0.0.1:PORT" or "lmtp:unix:/path/to/socket".
	// It becomes mailbox_transport for LocalDomains and virtual_transport
	// for VirtualDomains.
	MailboxTransport string
	// LocalDomains are put in mydestination. Their mail goes through
	// local(8), which hands it to mailbox_transport one recipient per LMTP
	// transaction (local_destination_recipient_limit = 1). Default
	// ["example.test"] when VirtualDomains is empty too.
	LocalDomains []string
	// VirtualDomains are virtual_mailbox_domains: the queue manager sends
	// their mail straight to virtual_transport, up to RecipientLimit
	// recipients in one LMTP transaction.
	VirtualDomains []string
	// RecipientLimit is lmtp_destination_recipient_limit (default 50).
	RecipientLimit int
	// Extra main.cf lines, written last (a later setting wins), for
	// example "transport_maps = inline:{other.test=lmtp:unix:/s}".
	Extra []string
}

// Instance is a running private Postfix.
type Instance struct {
	// Dir holds everything below; it is removed by Stop.
	Dir string
	// ConfigDir holds main.cf and master.cf: the "-c" of every command.
	ConfigDir string
	// QueueDir is queue_directory, DataDir data_directory.
	QueueDir, DataDir string
	// LogFile is maillog_file.
	LogFile string

	postfix, sendmail, postqueue string

	mu      sync.Mutex
	stopped bool
	logTail string // the log as read at Stop, for failure messages after
}

// Package is the Debian package that holds the programs.
const Package = "postfix"

// programs are the ones Start runs, in Instance's order.
var programs = []string{"postfix", "sendmail", "postqueue"}

// Start creates and starts an instance in a new directory. It needs root;
// a missing program is testenv.ErrNotInstalled (wrapped). Stop stops it
// and removes the directory.
func Start(ctx context.Context, opts Options) (*Instance, error) {
	paths, err := testenv.Find(Package, programs...)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("postfix.Start: the master must run as root")
	}
	if opts.MailboxTransport == "" {
		return nil, errors.New("postfix.Start: Options.MailboxTransport is empty")
	}
	// Not t.TempDir(): Postfix daemons run as mail_owner and must be
	// able to reach the queue, so every directory on the path must be
	// searchable by others, and t.TempDir's parent is mode 0700.
	dir, err := os.MkdirTemp("", "pfx")
	if err != nil {
		return nil, err
	}
	in := &Instance{
		Dir:       dir,
		ConfigDir: filepath.Join(dir, "etc"),
		QueueDir:  filepath.Join(dir, "queue"),
		DataDir:   filepath.Join(dir, "data"),
		LogFile:   filepath.Join(dir, "maillog"),
		postfix:   paths[0],
		sendmail:  paths[1],
		postqueue: paths[2],
	}
	if err := in.start(ctx, opts); err != nil {
		in.Stop()
		return nil, err
	}
	return in, nil
}

// StartT creates and starts an instance for a test; t.Cleanup stops it.
// It fails the test when Postfix cannot start, and skips (or fails under
// CI) when Postfix is not installed or the test is not running as root.
func StartT(t testing.TB, opts Options) *Instance {
	t.Helper()
	testenv.Require(t, Package, programs...)
	testenv.RequireRoot(t)
	start := func(ctx context.Context) (*Instance, error) { return Start(ctx, opts) }
	return testenv.StartPeerT(t, time.Minute, start, (*Instance).Stop)
}

// start writes the configuration, makes the queue and starts the master.
func (in *Instance) start(ctx context.Context, opts Options) error {
	if err := os.Chmod(in.Dir, 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(in.ConfigDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(in.ConfigDir, "main.cf"), []byte(in.mainCF(opts)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(in.ConfigDir, "master.cf"), []byte(MasterCF), 0o644); err != nil {
		return err
	}
	if err := MakeQueue(in.QueueDir, in.DataDir); err != nil {
		return fmt.Errorf("postfix.Start: %w", err)
	}
	// The directories are made as post-install create-missing would, so
	// the slow start-up checks (a shell loop of postconf, chown and find,
	// seconds on a busy machine) can be skipped: "quick-start" tells
	// postfix-script to do so once. Check() runs them on demand, and
	// this package's own test does.
	if err := os.WriteFile(filepath.Join(in.QueueDir, "quick-start"), nil, 0o644); err != nil {
		return err
	}
	if out, err := in.runContext(ctx, 30*time.Second, nil, in.postfix, "-c", in.ConfigDir, "start"); err != nil {
		return fmt.Errorf("postfix start: %w\n%s\nmail log:\n%s", err, out, in.Log())
	}
	if _, err := in.masterPID(); err != nil {
		return fmt.Errorf("postfix started but %w\nmail log:\n%s", err, in.Log())
	}
	return nil
}

// MakeQueue creates a Postfix queue directory and data directory with the
// ownerships and modes of Postfix's postfix-files (what "post-install
// create-missing" does): the queue root and pid/ belong to root, the rest
// to the postfix user, maildrop/ and public/ are group postdrop so that
// postdrop and postqueue can reach them. The lab's Postfix uses it too.
func MakeQueue(queueDir, dataDir string) error {
	pf, err := user.Lookup("postfix")
	if err != nil {
		return fmt.Errorf("no postfix user: %w", err)
	}
	gr, err := user.LookupGroup("postdrop")
	if err != nil {
		return fmt.Errorf("no postdrop group: %w", err)
	}
	owner, _ := strconv.Atoi(pf.Uid)
	postdrop, _ := strconv.Atoi(gr.Gid)
	dirs := []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{dataDir, owner, -1, 0o700},
		{queueDir, 0, -1, 0o755},
		{"active", owner, -1, 0o700},
		{"bounce", owner, -1, 0o700},
		{"corrupt", owner, -1, 0o700},
		{"defer", owner, -1, 0o700},
		{"deferred", owner, -1, 0o700},
		{"flush", owner, -1, 0o700},
		{"hold", owner, -1, 0o700},
		{"incoming", owner, -1, 0o700},
		{"private", owner, -1, 0o700},
		{"maildrop", owner, postdrop, 0o730},
		{"public", owner, postdrop, 0o710},
		{"pid", 0, -1, 0o755},
		{"saved", owner, -1, 0o700},
		{"trace", owner, -1, 0o700},
	}
	for _, d := range dirs {
		p := d.path
		if !filepath.IsAbs(p) {
			p = filepath.Join(queueDir, p)
		}
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		if err := os.Lchown(p, d.uid, d.gid); err != nil {
			return err
		}
		// Mkdir's mode is filtered by the umask.
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	return nil
}

func (in *Instance) mainCF(o Options) string {
	local := o.LocalDomains
	if len(local) == 0 && len(o.VirtualDomains) == 0 {
		local = []string{"example.test"}
	}
	limit := o.RecipientLimit
	if limit <= 0 {
		limit = 50
	}
	lines := []string{
		"# Private test instance made by internal/testenv/postfix.",
		"compatibility_level = 3.6",
		"queue_directory = " + in.QueueDir,
		"data_directory = " + in.DataDir,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = mx.test",
		"mydomain = test",
		"myorigin = $myhostname",
		"mydestination = " + strings.Join(append(append([]string{}, local...), "localhost"), ", "),
		"inet_interfaces = loopback-only",
		"inet_protocols = ipv4",
		"maillog_file = " + in.LogFile,
		"maillog_file_prefixes = " + in.Dir,
		// No /etc/aliases, no local user checks: every recipient in a
		// test domain goes to the transport under test, which decides.
		"alias_maps =",
		"alias_database =",
		"local_recipient_maps =",
		"biff = no",
		"mailbox_transport = " + o.MailboxTransport,
		"lmtp_destination_recipient_limit = " + strconv.Itoa(limit),
		// Nothing leaves the machine: bounces to outside senders fail
		// at once instead of waiting for DNS, and no postmaster notices.
		"default_transport = error:outside mail is disabled in this test instance",
		"relay_transport = error:outside mail is disabled in this test instance",
		"notify_classes =",
		"smtputf8_enable = no",
		// Retry deferred mail at once (tests flush anyway).
		"queue_run_delay = 1s",
		"minimal_backoff_time = 1s",
		"maximal_backoff_time = 2s",
	}
	if len(o.VirtualDomains) > 0 {
		lines = append(lines,
			"virtual_mailbox_domains = "+strings.Join(o.VirtualDomains, ", "),
			"virtual_transport = "+o.MailboxTransport)
	}
	lines = append(lines, o.Extra...)
	return strings.Join(lines, "\n") + "\n"
}

// MasterCF is Postfix 3.7's default master.cf without the SMTP listener,
// chroot off (the instance lives in a temporary directory) and with the
// postlog service that writes maillog_file.
const MasterCF = `# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// run runs a Postfix command with the instance's environment. Output goes
// to a file, not a pipe: "postfix start" leaves a daemon behind that would
// hold a pipe open, and CombinedOutput would wait for it.
func (in *Instance) run(timeout time.Duration, name string, args ...string) (string, error) {
	return in.runStdin(timeout, nil, name, args...)
}

func (in *Instance) runStdin(timeout time.Duration, stdin []byte, name string, args ...string) (string, error) {
	return in.runContext(context.Background(), timeout, stdin, name, args...)
}

func (in *Instance) runContext(ctx context.Context, timeout time.Duration, stdin []byte, name string, args ...string) (string, error) {
	out, err := os.CreateTemp(in.Dir, "cmd-out")
	if err != nil {
		return "", err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Env = in.env()
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	data, _ := os.ReadFile(out.Name())
	if ctx.Err() != nil {
		runErr = fmt.Errorf("%s timed out after %s: %w", filepath.Base(name), timeout, runErr)
	}
	return string(data), runErr
}

// env is the process environment without anything that would point a
// Postfix command elsewhere or hand it sockets.
func (in *Instance) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "MAIL_CONFIG", k == "MAIL_DEBUG", k == "MAIL_VERBOSE", k == "MAIL_LOGTAG",
			strings.HasPrefix(k, "LISTEN_"), k == "NOTIFY_SOCKET":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "MAIL_CONFIG="+in.ConfigDir)
}

// Sendmail submits msg (a complete message, header and body, with LF or
// CRLF line ends) from the envelope sender from to the recipients to,
// through sendmail(1) and postdrop(1), as a local program would. A line
// holding only "." is message content, not the end of input.
func (in *Instance) Sendmail(from string, to []string, msg []byte) error {
	if len(to) == 0 {
		return errors.New("sendmail: no recipients")
	}
	if from == "" {
		from = "<>"
	}
	args := append([]string{"-C", in.ConfigDir, "-i", "-f", from, "--"}, to...)
	out, err := in.runStdin(30*time.Second, msg, in.sendmail, args...)
	if err != nil {
		return fmt.Errorf("sendmail: %w: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// Flush asks the queue manager to retry every deferred message now
// (postqueue -f).
func (in *Instance) Flush() error {
	out, err := in.run(30*time.Second, in.postqueue, "-c", in.ConfigDir, "-f")
	if err != nil {
		return fmt.Errorf("postqueue -f: %w: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// Check runs "postfix check" on the instance's configuration and returns
// its output.
func (in *Instance) Check() (string, error) {
	return in.run(30*time.Second, in.postfix, "-c", in.ConfigDir, "check")
}

// Queue lists the queue (postqueue -p).
func (in *Instance) Queue() (string, error) {
	return in.run(30*time.Second, in.postqueue, "-c", in.ConfigDir, "-p")
}

// Log returns the mail log so far.
func (in *Instance) Log() string {
	data, err := os.ReadFile(in.LogFile)
	if err != nil {
		in.mu.Lock()
		defer in.mu.Unlock()
		return in.logTail
	}
	return string(data)
}

// Lines returns the log lines matching pattern: a string (a substring) or
// a *regexp.Regexp.
func (in *Instance) Lines(pattern any) []string {
	match := matcher(pattern)
	var out []string
	for line := range strings.SplitSeq(in.Log(), "\n") {
		if line != "" && match(line) {
			out = append(out, line)
		}
	}
	return out
}

func matcher(pattern any) func(string) bool {
	switch p := pattern.(type) {
	case string:
		return func(s string) bool { return strings.Contains(s, p) }
	case *regexp.Regexp:
		return p.MatchString
	}
	panic(fmt.Sprintf("postfix: log pattern must be a string or *regexp.Regexp, not %T", pattern))
}

// WaitLog waits until at least count log lines match pattern (a substring
// or a *regexp.Regexp) and returns the matching lines. After timeout it
// fails the test, showing the log.
func (in *Instance) WaitLog(t testing.TB, pattern any, count int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lines := in.Lines(pattern)
		if len(lines) >= count {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d of %d mail log lines match %v\nmail log:\n%s", timeout, len(lines), count, pattern, in.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// QueueID waits for the cleanup daemon's line for the message with
// Message-ID messageID (given without angle brackets) and returns the
// message's queue ID, so that a test can follow one message in the log.
func (in *Instance) QueueID(t testing.TB, messageID string, timeout time.Duration) string {
	t.Helper()
	re := regexp.MustCompile(`postfix/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=<` + regexp.QuoteMeta(messageID) + `>`)
	lines := in.WaitLog(t, re, 1, timeout)
	return re.FindStringSubmatch(lines[0])[1]
}

// masterPID reads the master's PID from the instance's pid file.
func (in *Instance) masterPID() (int, error) {
	data, err := os.ReadFile(filepath.Join(in.QueueDir, "pid", "master.pid"))
	if err != nil {
		return 0, fmt.Errorf("no master pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("bad master pid file %q", data)
	}
	return pid, nil
}

// MasterPID is the PID of the instance's master process.
func (in *Instance) MasterPID() (int, error) { return in.masterPID() }

// isOurMaster reports whether pid is alive and is a Postfix master (so a
// PID reused by another process is never signalled).
func isOurMaster(pid int) bool {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(cmdline) == 0 {
		return false // gone (or a zombie: nothing left to stop)
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	return filepath.Base(string(argv0)) == "master"
}

// Stop stops the instance with "postfix stop" and, should that fail,
// kills the master's process group by the PID in its pid file. Then it
// removes the instance's directory. It is safe to call more than once and
// is registered with t.Cleanup by StartT.
func (in *Instance) Stop() {
	in.mu.Lock()
	if in.stopped {
		in.mu.Unlock()
		return
	}
	in.stopped = true
	in.mu.Unlock()

	pid, pidErr := in.masterPID()
	var stopErr error = errors.New("no main.cf")
	if _, err := os.Stat(filepath.Join(in.ConfigDir, "main.cf")); err == nil {
		// "postfix stop" itself waits up to 5 s, then kills the group.
		_, stopErr = in.run(20*time.Second, in.postfix, "-c", in.ConfigDir, "stop")
	}
	if pidErr == nil {
		if stopErr == nil {
			deadline := time.Now().Add(5 * time.Second)
			for isOurMaster(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if isOurMaster(pid) {
			// The master leads its own process group (it calls
			// setsid), so this ends its children too.
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
			deadline := time.Now().Add(5 * time.Second)
			for isOurMaster(pid) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	data, _ := os.ReadFile(in.LogFile)
	in.mu.Lock()
	in.logTail = string(data)
	in.mu.Unlock()
	os.RemoveAll(in.Dir)
}
