package main

// End-to-end tests of "nfsdrop lmtpd": the built binary with its own
// configuration, user file and mail root, fed by a private Postfix
// instance (internal/testenv/postfix) over LMTP on TCP and on a Unix
// socket, by raw LMTP, and started through systemd-socket-activate.
//
// Every identifier here starts with "lmtpd" so as not to collide with the
// other end-to-end tests of this package.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/postfix"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
)

const lmtpdMarker = ".nfsdrop-mounted"

// lmtpdUsers is the passwd-file every test starts from (Dovecot format;
// an empty home means MAILROOT/<domain>/<local>/Maildir).
var lmtpdUsers = func() string {
	var b strings.Builder
	b.WriteString("# lmtpd e2e users\n")
	for _, u := range []string{"alice@example.test", "bob@example.test", "carol@unix.test"} {
		b.WriteString(u + ":{PLAIN}pw::::::\n")
	}
	b.WriteString("small@example.test:{PLAIN}pw::::::userdb_quota_rule=*:storage=1K\n")
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&b, "v%d@virt.test:{PLAIN}pw::::::\n", i)
	}
	return b.String()
}()

// lmtpdWorld is one lmtpd process and its files.
type lmtpdWorld struct {
	t         *testing.T
	dir       string // configuration, users, log
	mailRoot  string
	sock      string // the Unix socket lmtpd listens on
	port      int    // the TCP port lmtpd listens on
	cfgPath   string
	usersPath string
	logPath   string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

type lmtpdConfig struct {
	listen          []string
	quotaAction     string
	shutdownTimeout string
	// storeExtra are more [store] lines.
	storeExtra string
}

// newLmtpdWorld prepares the files (not the process). The Unix socket
// lives in a short directory readable by Postfix's lmtp client (which runs
// as the postfix user).
func newLmtpdWorld(t *testing.T) *lmtpdWorld {
	t.Helper()
	w := &lmtpdWorld{t: t, dir: t.TempDir(), mailRoot: filepath.Join(t.TempDir(), "mail")}
	sockDir := testenv.ShortTempDir(t)
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	w.sock = filepath.Join(sockDir, "lmtp.sock")
	w.port = testenv.FreePort(t)
	w.cfgPath = filepath.Join(w.dir, "nfsdrop.toml")
	w.usersPath = filepath.Join(w.dir, "users")
	w.logPath = filepath.Join(w.dir, "lmtpd.log")
	if err := os.MkdirAll(w.mailRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	w.setMounted(true)
	if err := os.WriteFile(w.usersPath, []byte(lmtpdUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	w.writeConfig(lmtpdConfig{})
	return w
}

func (w *lmtpdWorld) tcpAddr() string { return "127.0.0.1:" + strconv.Itoa(w.port) }

func (w *lmtpdWorld) writeConfig(c lmtpdConfig) {
	w.t.Helper()
	if c.listen == nil {
		c.listen = []string{"tcp:" + w.tcpAddr(), "unix:" + w.sock}
	}
	if c.quotaAction == "" {
		c.quotaAction = "bounce"
	}
	if c.shutdownTimeout == "" {
		c.shutdownTimeout = "20s"
	}
	var quoted []string
	for _, l := range c.listen {
		quoted = append(quoted, strconv.Quote(l))
	}
	cfg := fmt.Sprintf(`hostname = "drop.test"

[log]
level = "info"

[store]
mail_root = %q
mount_marker = %q
quota_action = %q
%s
[userdb]
driver = "passwd-file"
passwd_file = "users"
default_domain = "example.test"

[lmtp]
listen = [%s]
shutdown_timeout = %q
`, w.mailRoot, lmtpdMarker, c.quotaAction, c.storeExtra, strings.Join(quoted, ", "), c.shutdownTimeout)
	if err := os.WriteFile(w.cfgPath, []byte(cfg), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// setMounted creates or removes the mount marker (the "NFS is mounted"
// proof).
func (w *lmtpdWorld) setMounted(on bool) {
	w.t.Helper()
	p := filepath.Join(w.mailRoot, lmtpdMarker)
	var err error
	if on {
		err = os.WriteFile(p, []byte("mounted\n"), 0o644)
	} else {
		err = os.Remove(p)
	}
	if err != nil {
		w.t.Fatal(err)
	}
}

// start runs "nfsdrop lmtpd -c CONFIG", after prefix (a wrapper such as
// systemd-socket-activate) when given. It does not wait for readiness.
func (w *lmtpdWorld) start(prefix ...string) {
	w.t.Helper()
	bin := testenv.Binary(w.t)
	args := append(append([]string{}, prefix...), bin, "lmtpd", "-c", w.cfgPath)
	logf, err := os.OpenFile(w.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		w.t.Fatal(err)
	}
	defer logf.Close()
	w.cmd = exec.Command(args[0], args[1:]...)
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	w.cmd.Env = lmtpdEnv()
	if err := w.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.exited = make(chan struct{})
	go func() {
		w.waitErr = w.cmd.Wait()
		close(w.exited)
	}()
	w.t.Cleanup(func() {
		if !w.hasExited() {
			w.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-w.exited:
			case <-time.After(10 * time.Second):
				w.cmd.Process.Kill()
				<-w.exited
			}
		}
		if w.t.Failed() {
			w.t.Logf("lmtpd log:\n%s", w.log())
		}
	})
}

// lmtpdEnv is the environment without sockets or a notify socket meant
// for the test process itself.
func lmtpdEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "NFSDROP_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (w *lmtpdWorld) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

// waitReady waits for lmtpd's "listening" line and for its TCP port.
func (w *lmtpdWorld) waitReady() {
	w.t.Helper()
	w.waitLog(`msg=listening`, 15*time.Second)
	c := lmtpdDial(w.t, "tcp", w.tcpAddr())
	c.send("QUIT\r\n")
	c.expect("221 ")
}

func (w *lmtpdWorld) log() string {
	data, _ := os.ReadFile(w.logPath)
	return string(data)
}

// waitLog waits until the log matches the regular expression re.
func (w *lmtpdWorld) waitLog(re string, timeout time.Duration) string {
	w.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		if m := rx.FindString(w.log()); m != "" {
			return m
		}
		if w.hasExited() {
			w.t.Fatalf("lmtpd exited (%v) before logging %q:\n%s", w.waitErr, re, w.log())
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("lmtpd did not log %q within %s:\n%s", re, timeout, w.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitExit waits for the process to end and returns its exit code.
func (w *lmtpdWorld) waitExit(timeout time.Duration) int {
	w.t.Helper()
	select {
	case <-w.exited:
	case <-time.After(timeout):
		w.t.Fatalf("lmtpd still running after %s", timeout)
	}
	if w.waitErr == nil {
		return 0
	}
	if ee, ok := w.waitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	w.t.Fatalf("lmtpd: %v", w.waitErr)
	return -1
}

func (w *lmtpdWorld) maildir(addr string) string {
	local, domain, _ := strings.Cut(addr, "@")
	return filepath.Join(w.mailRoot, domain, local, "Maildir")
}

// stored returns the names of the files in addr's new/ holding the
// message with Message-ID id.
func (w *lmtpdWorld) stored(addr, id string) []string {
	w.t.Helper()
	dir := filepath.Join(w.maildir(addr), "new")
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		w.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			w.t.Fatal(err)
		}
		if bytes.Contains(data, []byte("Message-ID: <"+id+">")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// lmtpdMessage is a message with Message-ID id, padded to about size
// bytes.
func lmtpdMessage(id string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@remote.test\r\nTo: someone@example.test\r\nMessage-ID: <%s>\r\nSubject: lmtpd e2e %s\r\n\r\n", id, id)
	for b.Len() < size {
		b.WriteString("The quick brown fox jumps over the lazy dog, 0123456789.\r\n")
	}
	return b.Bytes()
}

var lmtpdIDs struct {
	sync.Mutex
	n int
}

// lmtpdID makes a unique Message-ID.
func lmtpdID(tag string) string {
	lmtpdIDs.Lock()
	defer lmtpdIDs.Unlock()
	lmtpdIDs.n++
	return fmt.Sprintf("%s.%d.%d@e2e.test", tag, os.Getpid(), lmtpdIDs.n)
}

// lmtpdClient is a raw LMTP client (testkit.LineConn under this file's
// names).
type lmtpdClient struct{ *testkit.LineConn }

func lmtpdDial(t *testing.T, network, addr string) *lmtpdClient {
	t.Helper()
	c := &lmtpdClient{testkit.Dial(t, network, addr)}
	c.Timeout = 30 * time.Second
	c.expect("220 ")
	return c
}

func (c *lmtpdClient) send(s string) { c.T.Helper(); c.Raw(s) }

// reply reads one reply and returns its last line ("" at EOF).
func (c *lmtpdClient) reply() string { c.T.Helper(); return c.Reply() }

func (c *lmtpdClient) expect(prefix string) string { c.T.Helper(); return c.ExpectReply(prefix) }

// transaction sends one message to rcpts (all must be accepted at RCPT)
// and returns the reply for each after DATA.
func (c *lmtpdClient) transaction(msg []byte, rcpts ...string) []string {
	c.T.Helper()
	c.send("MAIL FROM:<sender@remote.test>\r\n")
	c.expect("250 ")
	for _, r := range rcpts {
		c.send("RCPT TO:<" + r + ">\r\n")
		c.expect("250 ")
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	wire := bytes.ReplaceAll(msg, []byte("\r\n."), []byte("\r\n.."))
	c.send(string(wire) + ".\r\n")
	var out []string
	for range rcpts {
		out = append(out, c.reply())
	}
	return out
}

// savedKey extracts the Maildir key from "250 2.0.0 <rcpt> <key> Saved".
var lmtpdSavedRE = regexp.MustCompile(`^250 2\.0\.0 <([^>]+)> <([^>]+)> Saved$`)

// TestLMTPDPostfix runs stock Postfix in front of lmtpd, delivering the
// local domain example.test (mailbox_transport) over TCP, the virtual
// domain virt.test (virtual_transport) over TCP and the virtual domain
// unix.test over the Unix socket, and checks what Postfix logs and what
// lands in the Maildirs.
func TestLMTPDPostfix(t *testing.T) {
	w := newLmtpdWorld(t)
	// The volume's health probe runs only at start: "store unavailable"
	// below removes the marker to see the store's own guard answer "mail
	// store not mounted", and a probe landing in that window would mark
	// the volume down instead (another answer, and an ERROR line that
	// this test rightly refuses). The probe has its own tests
	// (TestLMTPDReloadKeepsVolumeHealth, internal/fsgate).
	w.writeConfig(lmtpdConfig{storeExtra: "volume_probe_interval = \"1h\"\n"})
	w.start()
	w.waitReady()
	pf := postfix.StartT(t, postfix.Options{
		MailboxTransport: "lmtp:inet:" + w.tcpAddr(),
		LocalDomains:     []string{"example.test"},
		VirtualDomains:   []string{"virt.test", "unix.test"},
		RecipientLimit:   20,
		Extra:            []string{"transport_maps = inline:{ unix.test=lmtp:unix:" + w.sock + " }"},
	})
	const wait = 20 * time.Second
	tcpRelay := `relay=127\.0\.0\.1\[127\.0\.0\.1\]:` + strconv.Itoa(w.port) + `,`
	unixRelay := `relay=[^,]*\[` + regexp.QuoteMeta(w.sock) + `\],`

	// sent waits for rcpt's status=sent line for queue ID qid, checks
	// the relay and the reply, and returns the Maildir key.
	sent := func(t *testing.T, qid, rcpt, relay string) string {
		t.Helper()
		re := regexp.MustCompile(qid + `: to=<` + regexp.QuoteMeta(rcpt) + `>, .*` + relay +
			` .*dsn=2\.0\.0, status=sent \(250 2\.0\.0 <` + regexp.QuoteMeta(rcpt) + `> <([^>]+)> Saved\)`)
		line := pf.WaitLog(t, re, 1, wait)[0]
		return re.FindStringSubmatch(line)[1]
	}
	// checkStored checks that the key Postfix logged names the file in
	// rcpt's new/ that holds the message.
	checkStored := func(t *testing.T, rcpt, id, key string) {
		t.Helper()
		if got := w.stored(rcpt, id); len(got) != 1 || got[0] != key {
			t.Errorf("%s: new/ holds %v for %s, Postfix logged key %s", rcpt, got, id, key)
		}
	}

	for _, tc := range []struct {
		name, known, unknown, relay string
	}{
		{"tcp", "alice@example.test", "nobody@example.test", tcpRelay},
		{"unix", "carol@unix.test", "nobody@unix.test", unixRelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := lmtpdID(tc.name)
			if err := pf.Sendmail("sender@remote.test", []string{tc.known, tc.unknown}, lmtpdMessage(id, 500)); err != nil {
				t.Fatal(err)
			}
			qid := pf.QueueID(t, id, wait)
			key := sent(t, qid, tc.known, tc.relay)
			checkStored(t, tc.known, id, key)
			pf.WaitLog(t, regexp.MustCompile(qid+`: to=<`+regexp.QuoteMeta(tc.unknown)+`>, .*`+tc.relay+
				` .*dsn=5\.1\.1, status=bounced \(host .* said: 550 5\.1\.1 User unknown \(in reply to RCPT TO command\)\)`), 1, wait)
		})
	}

	t.Run("store unavailable", func(t *testing.T) {
		// The NFS mount is gone: every delivery is deferred with a 4xx,
		// over TCP and over the Unix socket alike, and nothing is
		// written.
		w.setMounted(false)
		id := lmtpdID("unmounted")
		rcpts := []struct{ addr, relay string }{
			{"bob@example.test", tcpRelay},
			{"carol@unix.test", unixRelay},
		}
		if err := pf.Sendmail("sender@remote.test", []string{rcpts[0].addr, rcpts[1].addr}, lmtpdMessage(id, 500)); err != nil {
			t.Fatal(err)
		}
		qid := pf.QueueID(t, id, wait)
		for _, r := range rcpts {
			pf.WaitLog(t, regexp.MustCompile(qid+`: to=<`+regexp.QuoteMeta(r.addr)+`>, .*`+r.relay+
				` .*dsn=4\.\d+\.\d+, status=deferred \(host .* said: 4\d\d 4\.\d+\.\d+ <`+regexp.QuoteMeta(r.addr)+`> mail store not mounted`), 1, wait)
			if got := w.stored(r.addr, id); len(got) != 0 {
				t.Errorf("%s: stored %v while the store was unavailable", r.addr, got)
			}
		}
		if n := len(pf.Lines(regexp.MustCompile(qid + `: .*status=sent`))); n != 0 {
			t.Fatalf("%d deliveries reported sent while the store was unavailable", n)
		}

		// The mount is back: a flush delivers each recipient exactly once.
		w.setMounted(true)
		if err := pf.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, r := range rcpts {
			key := sent(t, qid, r.addr, r.relay)
			checkStored(t, r.addr, id, key)
		}
		pf.WaitLog(t, qid+": removed", 1, wait)
		for _, r := range rcpts {
			if n := len(pf.Lines(regexp.MustCompile(qid + `: to=<` + regexp.QuoteMeta(r.addr) + `>, .*status=sent`))); n != 1 {
				t.Errorf("%s: %d status=sent lines, want 1", r.addr, n)
			}
			if got := w.stored(r.addr, id); len(got) != 1 {
				t.Errorf("%s: %d copies stored, want 1: %v", r.addr, len(got), got)
			}
		}
	})

	t.Run("ten recipients", func(t *testing.T) {
		// One message for ten users in one LMTP transaction: stored once
		// and hard-linked into every Maildir.
		id := lmtpdID("ten")
		var rcpts []string
		for i := 1; i <= 10; i++ {
			rcpts = append(rcpts, fmt.Sprintf("v%d@virt.test", i))
		}
		if err := pf.Sendmail("sender@remote.test", rcpts, lmtpdMessage(id, 3000)); err != nil {
			t.Fatal(err)
		}
		qid := pf.QueueID(t, id, wait)
		keys := map[string]string{}
		for _, r := range rcpts {
			keys[r] = sent(t, qid, r, tcpRelay)
		}
		var ino uint64
		for _, r := range rcpts {
			key := keys[r]
			checkStored(t, r, id, key)
			fi, err := os.Stat(filepath.Join(w.maildir(r), "new", key))
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if ino == 0 {
				ino = st.Ino
			}
			if st.Ino != ino || st.Nlink != 10 {
				t.Errorf("%s: inode %d with %d links, want inode %d with 10 links", r, st.Ino, st.Nlink, ino)
			}
		}
		for _, r := range rcpts {
			if keys[r] != keys[rcpts[0]] {
				t.Errorf("keys %v, want one key for all ten", keys)
				break
			}
		}
		if !strings.Contains(w.log(), "recipients=10") {
			t.Errorf("lmtpd did not log one transaction with 10 recipients")
		}
		// Each recipient's log line carries Postfix's queue id, so one
		// message's story can be grepped across both logs.
		if n := strings.Count(w.log(), "queue_id="+qid); n != 10 {
			t.Errorf("lmtpd logged queue_id=%s on %d lines, want 10", qid, n)
		}
	})

	t.Run("over quota", func(t *testing.T) {
		id := lmtpdID("quota")
		if err := pf.Sendmail("sender@remote.test", []string{"small@example.test"}, lmtpdMessage(id, 2048)); err != nil {
			t.Fatal(err)
		}
		qid := pf.QueueID(t, id, wait)
		pf.WaitLog(t, regexp.MustCompile(qid+`: to=<small@example\.test>, .*`+tcpRelay+
			` .*dsn=5\.2\.2, status=bounced \(host .* said: 552 5\.2\.2 <small@example\.test> Mailbox full`), 1, wait)
		if got := w.stored("small@example.test", id); len(got) != 0 {
			t.Errorf("stored %v over quota", got)
		}
	})

	if lines := pf.Lines(regexp.MustCompile(`(warning|fatal|panic):`)); len(lines) != 0 {
		t.Errorf("Postfix warnings:\n%s", strings.Join(lines, "\n"))
	}
	if strings.Contains(w.log(), "level=ERROR") {
		t.Errorf("lmtpd logged errors:\n%s", w.log())
	}
}

// TestLMTPDSignals: SIGHUP reloads the configuration without a restart
// (here quota_action, which only the configuration carries), a broken
// configuration is refused and the running one kept, the passwd-file is
// re-read when it changes, and SIGTERM with an idle connection open exits
// 0 at once rather than waiting for shutdown_timeout.
func TestLMTPDSignals(t *testing.T) {
	w := newLmtpdWorld(t)
	w.start()
	w.waitReady()
	pid := w.cmd.Process.Pid
	big := lmtpdMessage(lmtpdID("big"), 2048)

	c := lmtpdDial(t, "tcp", w.tcpAddr())
	c.send("LHLO client.test\r\n")
	c.expect("250 ")
	if got := c.transaction(big, "small@example.test"); !strings.HasPrefix(got[0], "552 5.2.2 <small@example.test> ") {
		t.Fatalf("over quota with quota_action=bounce: %q, want 552 5.2.2", got[0])
	}

	// A user added to the passwd-file is found without a restart.
	c.send("MAIL FROM:<sender@remote.test>\r\nRCPT TO:<dave@example.test>\r\n")
	c.expect("250 ")
	c.expect("550 5.1.1 ")
	f, err := os.OpenFile(w.usersPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("dave@example.test:{PLAIN}pw::::::\n")
	f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.send("RCPT TO:<dave@example.test>\r\n")
		if strings.HasPrefix(c.reply(), "250 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a user added to the passwd-file was not found")
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.send("RSET\r\n")
	c.expect("250 ")

	// SIGHUP with a changed configuration: reloaded, same process.
	w.writeConfig(lmtpdConfig{quotaAction: "defer"})
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	w.waitLog(`msg=reloaded`, 15*time.Second)
	if w.hasExited() {
		t.Fatal("lmtpd exited on SIGHUP")
	}
	// The connection opened before the reload still works and sees the
	// new setting.
	if got := c.transaction(big, "small@example.test"); !strings.HasPrefix(got[0], "452 4.2.2 <small@example.test> ") {
		t.Fatalf("over quota after reloading quota_action=defer: %q, want 452 4.2.2", got[0])
	}

	// SIGHUP with a broken configuration: refused, still serving.
	if err := os.WriteFile(w.cfgPath, []byte("[store]\nmail_rot = \"/nowhere\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGHUP)
	w.waitLog(`msg="reload failed; keeping the running configuration"`, 15*time.Second)
	c2 := lmtpdDial(t, "unix", w.sock)
	c2.send("LHLO client.test\r\n")
	c2.expect("250 ")
	id := lmtpdID("after-bad-reload")
	got := c2.transaction(lmtpdMessage(id, 100), "alice@example.test")
	m := lmtpdSavedRE.FindStringSubmatch(got[0])
	if m == nil {
		t.Fatalf("after a failed reload: %q, want 250", got[0])
	}
	if files := w.stored("alice@example.test", id); len(files) != 1 || files[0] != m[2] {
		t.Errorf("reply key %s, stored %v", m[2], files)
	}

	// SIGTERM while idle (c is open, between transactions): exit 0 well
	// before shutdown_timeout (20 s), the idle connection closed.
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("SIGTERM took %s with only idle connections", d)
	}
	if line := c.reply(); line != "" && !strings.HasPrefix(line, "421 ") {
		t.Errorf("idle connection got %q at shutdown", line)
	}
	if !strings.Contains(w.log(), "msg=stopped") {
		t.Errorf("no \"stopped\" log line:\n%s", w.log())
	}
	if _, err := os.Stat(w.sock); err == nil {
		// Not required, but a leftover socket is replaced at the next
		// start anyway (daemon.Listen); just note it.
		t.Logf("Unix socket %s left behind after SIGTERM", w.sock)
	}
}

// TestLMTPDSocketActivation: lmtpd started by systemd-socket-activate
// serves the sockets it is given with the name "lmtp" (TCP and Unix), not
// the address in its configuration.
func TestLMTPDSocketActivation(t *testing.T) {
	sa := testenv.Require(t, "systemd", "systemd-socket-activate")[0]
	w := newLmtpdWorld(t)
	// The configuration names a different address: it must stay unbound.
	configured := testenv.FreePort(t)
	w.writeConfig(lmtpdConfig{listen: []string{"tcp:127.0.0.1:" + strconv.Itoa(configured)}})
	w.start(sa, "-l", w.tcpAddr(), "-l", w.sock, "--fdname=lmtp:lmtp")
	lmtpdWaitDial(t, "tcp", w.tcpAddr())

	// The first connection starts lmtpd, which takes it over.
	c := lmtpdDial(t, "tcp", w.tcpAddr())
	c.send("LHLO client.test\r\n")
	c.expect("250 ")
	id := lmtpdID("activated-tcp")
	got := c.transaction(lmtpdMessage(id, 300), "alice@example.test")
	if m := lmtpdSavedRE.FindStringSubmatch(got[0]); m == nil || len(w.stored("alice@example.test", id)) != 1 {
		t.Fatalf("delivery over the activated TCP socket: %q", got[0])
	}
	w.waitLog(`msg=listening`, 10*time.Second)

	c2 := lmtpdDial(t, "unix", w.sock)
	c2.send("LHLO client.test\r\n")
	c2.expect("250 ")
	id = lmtpdID("activated-unix")
	got = c2.transaction(lmtpdMessage(id, 300), "bob@example.test")
	if m := lmtpdSavedRE.FindStringSubmatch(got[0]); m == nil || len(w.stored("bob@example.test", id)) != 1 {
		t.Fatalf("delivery over the activated Unix socket: %q", got[0])
	}

	if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(configured), time.Second); err == nil {
		conn.Close()
		t.Errorf("lmtpd also listens on its configured address although activated")
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if code := w.waitExit(10 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestLMTPDSocketActivationWrongName: sockets passed under another name
// are not served; lmtpd refuses to start and says which name it wants.
func TestLMTPDSocketActivationWrongName(t *testing.T) {
	sa := testenv.Require(t, "systemd", "systemd-socket-activate")[0]
	w := newLmtpdWorld(t)
	w.writeConfig(lmtpdConfig{listen: []string{"tcp:127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))}})
	w.start(sa, "-l", w.tcpAddr(), "--fdname=pop3")
	lmtpdWaitDial(t, "tcp", w.tcpAddr()) // starts lmtpd
	code := w.waitExit(15 * time.Second)
	if code == 0 {
		t.Fatalf("lmtpd exited 0 with only a socket named pop3:\n%s", w.log())
	}
	if code != exConfig {
		t.Errorf("exit code %d, want %d (EX_CONFIG)", code, exConfig)
	}
	if log := w.log(); !strings.Contains(log, `"lmtp"`) {
		t.Errorf("the error does not name the socket name wanted:\n%s", log)
	}
}

// lmtpdWaitDial connects (and disconnects) once the address accepts.
func lmtpdWaitDial(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s never accepted: %v", network, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLMTPDReloadKeepsVolumeHealth: a SIGHUP while a volume is down keeps
// its gate (its health, its slots, its probe): recipients on it still get
// 451 at once, and the volume is reported down once, not again by a new
// gate that would start up and let another volume_max_calls calls block
// on a hung filer. When the marker is back, it is reported up once.
func TestLMTPDReloadKeepsVolumeHealth(t *testing.T) {
	w := newLmtpdWorld(t)
	cfg := lmtpdConfig{storeExtra: "volume_probe_interval = \"100ms\"\nvolume_probe_timeout = \"1s\"\n"}
	w.writeConfig(cfg)
	w.start()
	w.waitReady()
	pid := w.cmd.Process.Pid

	w.setMounted(false)
	w.waitLog(`msg="volume down`, 10*time.Second)
	c := lmtpdDial(t, "tcp", w.tcpAddr())
	c.send("LHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("451 4.3.0 ")

	cfg.quotaAction = "defer" // a change, so that the reload builds a new configuration
	w.writeConfig(cfg)
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	w.waitLog(`msg=reloaded`, 15*time.Second)
	c.send("RCPT TO:<alice@example.test>\r\n")
	c.expect("451 4.3.0 ")
	time.Sleep(time.Second) // ten probe intervals of the reloaded configuration
	if n := strings.Count(w.log(), `msg="volume down`); n != 1 {
		t.Errorf("volume reported down %d times around a reload, want once:\n%s", n, w.log())
	}

	w.setMounted(true)
	w.waitLog(`msg="volume up again"`, 10*time.Second)
	c.send("RCPT TO:<alice@example.test>\r\n")
	c.expect("250 ")
	if n := strings.Count(w.log(), `msg="volume up again"`); n != 1 {
		t.Errorf("volume reported up %d times, want once", n)
	}
}
