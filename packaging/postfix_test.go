package packaging_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/postfix"
)

// snippet returns the setting lines of a contrib/postfix file (comments
// and blank lines dropped) with each replacement applied.
func snippet(t testing.TB, name string, repl ...string) []string {
	t.Helper()
	text := strings.NewReplacer(repl...).Replace(repoFile(t, "contrib/postfix/"+name))
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		lines = append(lines, line)
	}
	return lines
}

// options makes the private instance's options from a main.cf snippet:
// the harness writes mailbox_transport itself (from the snippet when it
// sets one), everything else comes from the snippet.
func options(t testing.TB, lines []string, fallback string) postfix.Options {
	t.Helper()
	o := postfix.Options{MailboxTransport: fallback}
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "mailbox_transport = "); ok {
			o.MailboxTransport = v
			continue
		}
		o.Extra = append(o.Extra, l)
	}
	return o
}

// withMaster appends the contrib master.cf services to the instance's
// master.cf, reloads it, and runs postfix check and postconf, which must
// not complain about any setting.
func withMaster(t *testing.T, in *postfix.Instance, bin, cfg string) {
	t.Helper()
	master := snippet(t, "master.cf",
		"/usr/sbin/nfsdrop deliver", bin+" deliver -c "+cfg,
		"user=nfsdrop", "user=nobody")
	f, err := os.OpenFile(filepath.Join(in.ConfigDir, "master.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, strings.Join(master, "\n"))
	f.Close()
	pf := testenv.Require(t, "postfix", "postfix", "postconf")
	postfixCmd(t, in, pf[0], "-c", in.ConfigDir, "reload")
	if out, err := in.Check(); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("postfix check: %v\n%s", err, out)
	}
	out := postfixCmd(t, in, pf[1], "-c", in.ConfigDir, "-n")
	if strings.Contains(out, "warning") {
		t.Errorf("postconf -n warns:\n%s", out)
	}
}

func postfixCmd(t testing.TB, in *postfix.Instance, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(cleanEnv(), "MAIL_CONFIG="+in.ConfigDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sendTestMail(t testing.TB, in *postfix.Instance, subject string) {
	t.Helper()
	msg := "From: sender@example.net\r\nTo: " + mailUser + "\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.net>\r\n\r\nhello\r\n"
	if err := in.Sendmail("sender@example.net", []string{mailUser}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// TestPostfixLMTPUnix: main.cf-lmtp-unix and master.cf's nfsdrop-lmtp in
// a private Postfix; a message travels to nfsdrop lmtpd over the Unix
// socket into the Maildir.
func TestPostfixLMTPUnix(t *testing.T) {
	b := packages(t)
	w := newWorld(t, conf{})
	sock := filepath.Join(w.dir, "lmtp")
	w.configure(conf{lmtpListen: []string{"unix:" + sock}})
	d := start(t, filepath.Join(w.dir, "lmtpd.log"), nil, b.bin, "lmtpd", "-c", w.cfg)
	d.waitLog(10*time.Second, "msg=listening")

	in := postfix.StartT(t, options(t, snippet(t, "main.cf-lmtp-unix", "/run/nfsdrop/lmtp", sock), ""))
	withMaster(t, in, b.bin, w.cfg)
	sendTestMail(t, in, "over the unix socket")
	in.Flush()
	msgs := w.waitMessages(1, 30*time.Second)
	if !strings.Contains(msgs[0], "Subject: over the unix socket") {
		t.Errorf("delivered message:\n%s", msgs[0])
	}
	in.WaitLog(t, "status=sent", 1, 10*time.Second)
	if lines := in.Lines("[" + sock + "]"); len(lines) == 0 {
		t.Errorf("no delivery through the nfsdrop-lmtp transport to %s:\n%s", sock, in.Log())
	}
}

// TestPostfixLMTPTCP: main.cf-lmtp-tcp with three drop machines, the
// first and last down: Postfix moves on to the one that answers.
func TestPostfixLMTPTCP(t *testing.T) {
	b := packages(t)
	w := newWorld(t, conf{})
	ports := []int{testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)}
	live := fmt.Sprintf("127.0.0.1:%d", ports[1])
	w.configure(conf{lmtpListen: []string{"tcp:" + live}})
	d := start(t, filepath.Join(w.dir, "lmtpd.log"), nil, b.bin, "lmtpd", "-c", w.cfg)
	d.waitLog(10*time.Second, "msg=listening")

	extra := snippet(t, "main.cf-lmtp-tcp",
		"[drop1.example.org]:24", fmt.Sprintf("[127.0.0.1]:%d", ports[0]),
		"[drop2.example.org]:24", fmt.Sprintf("[127.0.0.1]:%d", ports[1]),
		"[drop3.example.org]:24", fmt.Sprintf("[127.0.0.1]:%d", ports[2]))
	in := postfix.StartT(t, options(t, extra, "lmtp:unix:"+filepath.Join(w.dir, "none")))
	withMaster(t, in, b.bin, w.cfg)
	sendTestMail(t, in, "over tcp")
	in.Flush()
	defer func() {
		if t.Failed() {
			t.Logf("mail log:\n%s", in.Log())
		}
	}()
	w.waitMessages(1, 30*time.Second)
	in.WaitLog(t, "status=sent", 1, 10*time.Second)
	if lines := in.Lines(fmt.Sprintf("relay=127.0.0.1[127.0.0.1]:%d", ports[1])); len(lines) == 0 {
		t.Errorf("not delivered through the live drop machine:\n%s", in.Log())
	}
}

// TestPostfixPipe: main.cf-pipe and master.cf's nfsdrop pipe(8) service
// (run as nobody here instead of nfsdrop): nfsdrop deliver stores the
// message once, with one Delivered-To and one Return-Path.
func TestPostfixPipe(t *testing.T) {
	b := packages(t)
	w := newWorld(t, conf{worldWritableRoot: true})
	// nobody must be able to run the binary: the unpacked .deb is under
	// the test's scratch directory, mode 0700.
	bin := filepath.Join(w.dir, "nfsdrop")
	copyFile(t, b.bin, bin)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	in := postfix.StartT(t, options(t, snippet(t, "main.cf-pipe"), "lmtp:unix:"+filepath.Join(w.dir, "none")))
	withMaster(t, in, bin, w.cfg)
	sendTestMail(t, in, "through pipe")
	in.Flush()
	msgs := w.waitMessages(1, 30*time.Second)
	header, _, _ := strings.Cut(strings.ReplaceAll(msgs[0], "\r\n", "\n"), "\n\n")
	for _, h := range []string{"Delivered-To:", "Return-Path:"} {
		n := 0
		for _, line := range strings.Split(header, "\n") {
			if strings.HasPrefix(line, h) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d %s headers, want 1:\n%s", n, h, msgs[0])
		}
	}
	in.WaitLog(t, "status=sent", 1, 10*time.Second)
}

// TestPostfixMailboxCommand: main.cf-mailbox-command passes postfix check
// (delivering needs a local Unix user for the recipient).
func TestPostfixMailboxCommand(t *testing.T) {
	b := packages(t)
	w := newWorld(t, conf{})
	in := postfix.StartT(t, options(t, snippet(t, "main.cf-mailbox-command"), "lmtp:unix:"+filepath.Join(w.dir, "none")))
	withMaster(t, in, b.bin, w.cfg)
	out := postfixCmd(t, in, testenv.Require(t, "postfix", "postconf")[0], "-c", in.ConfigDir, "-h", "mailbox_command")
	if !strings.Contains(out, "/usr/sbin/nfsdrop deliver") {
		t.Errorf("mailbox_command = %q", out)
	}
}
