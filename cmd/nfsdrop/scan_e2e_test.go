package main

// End-to-end tests of virus scanning ([scan]) with a real clamd
// (internal/testenv/clamd, whose private database knows EICAR as
// clamd.Signature): Postfix → LMTP → nfsdrop lmtpd with action reject,
// quarantine and tag; clamd hung (SIGSTOP) and killed, then back; messages
// larger than clamd's StreamMaxLength with on_too_large skip and tempfail;
// and "nfsdrop deliver" with a virus and with clamd down.
//
// Every identifier here starts with "scanE2E" (or peer, from
// peer_e2e_helpers_test.go) so as not to collide with the other tests.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/clamd"
)

// scanE2EEicar is the EICAR test file; every message carries it (or
// scanE2EClean) base64-encoded as an attachment.
var (
	scanE2EEicar = []byte(clamd.EICAR)
	scanE2EClean = []byte("nothing to see here, just a harmless attachment\n")
)

// scanE2EUsers is the passwd-file: alice and bob in every test domain.
func (w *peerWorld) scanE2EUsers(domains ...string) {
	w.t.Helper()
	var lines []string
	for _, d := range domains {
		lines = append(lines, "alice@"+d+":{PLAIN}pw::::::", "bob@"+d+":{PLAIN}pw::::::")
	}
	w.writeUsers(lines...)
}

// scanE2EConfig is a configuration's [userdb] and [scan] sections: clamd
// at addr, a 2 s scan timeout, then extra [scan] lines ("action = ...").
func (w *peerWorld) scanE2EConfig(addr string, extra ...string) []string {
	userdb := fmt.Sprintf("[userdb]\ndriver = \"passwd-file\"\npasswd_file = %q\n", w.users)
	scan := fmt.Sprintf("[scan]\nenabled = true\nclamd = [%q]\ntimeout = \"2s\"\n", addr)
	for _, l := range extra {
		scan += l + "\n"
	}
	return []string{userdb, scan}
}

// scanE2EVirusRE matches what Postfix logs for a message refused because
// of the virus: 554 5.7.1 with the signature (EICAR in any case).
var scanE2EVirusRE = `dsn=5\.7\.1, status=bounced \(host .* said: 554 5\.7\.1 .*(?i:eicar).* \(in reply to end of DATA command\)\)`

// scanE2EDeferRE matches a recipient deferred because of clamd.
var scanE2EDeferRE = `dsn=4\.7\.1, status=deferred \(host .* said: 451 4\.7\.1 .*\(in reply to end of DATA command\)\)`

// TestScanE2EActions: one clamd, three lmtpd with action reject,
// quarantine and tag, each serving a domain of one Postfix.
//
//   - reject: a clean message is delivered (without X-Virus-Status:); one
//     with EICAR in an attachment, for two recipients, bounces with 554
//     5.7.1 and the signature, and no file is written anywhere.
//   - quarantine: the infected message is stored once, in
//     quarantine_maildir, with X-Virus-Status: Infected (SIGNATURE);
//     Postfix logs sent for both recipients, whose Maildirs stay empty.
//   - tag: the infected message is delivered with X-Virus-Status:
//     Infected (SIGNATURE), a clean one with X-Virus-Status: Clean.
func TestScanE2EActions(t *testing.T) {
	t.Parallel()
	av := clamd.StartT(t, clamd.Options{})
	w := newPeerWorld(t)
	w.scanE2EUsers("reject.test", "quarantine.test", "tag.test")
	quarantine := filepath.Join(w.root, "quarantine", "Maildir")

	reject, dReject := w.lmtpd("reject", "10M", w.scanE2EConfig(av.UnixAddress(), `action = "reject"`)...)
	quar, dQuar := w.lmtpd("quarantine", "10M", w.scanE2EConfig(av.TCPAddress(), `action = "quarantine"`,
		fmt.Sprintf("quarantine_maildir = %q", quarantine))...)
	tag, _ := w.lmtpd("tag", "10M", w.scanE2EConfig(av.UnixAddress(), `action = "tag"`)...)
	pf := peerStartPostfix(t, reject, []string{"reject.test", "quarantine.test", "tag.test"},
		"quarantine.test=lmtp:inet:"+quar, "tag.test=lmtp:inet:"+tag)
	maildir := func(r string) string { return peerMaildir(w.root, r) }

	t.Run("reject", func(t *testing.T) {
		clean, virus := peerID("reject-clean"), peerID("reject-virus")
		qClean := peerSend(t, pf, clean, peerMessage(clean, "alice@reject.test", scanE2EClean), "alice@reject.test")
		rcpts := []string{"alice@reject.test", "bob@reject.test"}
		qVirus := peerSend(t, pf, virus, peerMessage(virus, "team@reject.test", scanE2EEicar), rcpts...)

		peerSent(t, pf, qClean, "alice@reject.test")
		_, data := peerOnlyCopy(t, maildir("alice@reject.test"), clean)
		if v := peerHeader(data, "X-Virus-Status"); v != "" {
			t.Errorf("clean message under action reject got X-Virus-Status: %s", v)
		}
		for _, r := range rcpts {
			line := pf.WaitLog(t, peerLine(qVirus, r, scanE2EVirusRE), 1, peerWait)[0]
			if !strings.Contains(line, clamd.Signature) {
				t.Errorf("the bounce does not name the signature %s:\n%s", clamd.Signature, line)
			}
		}
		pf.WaitLog(t, qVirus+": removed", 1, peerWait)
		for _, r := range rcpts {
			if c := peerCopies(t, maildir(r), virus); len(c) != 0 {
				t.Errorf("%s: infected message stored: %q", r, c)
			}
		}
		// Nothing at all from the infected message: no file in new/, cur/
		// or tmp/ of either recipient but alice's clean message.
		if f := peerFiles(t, filepath.Join(w.root, "reject.test")); len(f) != 1 {
			t.Errorf("files under reject.test: %q, want only the clean message", f)
		}
		if log := string(readFile(t, dReject.log)); !regexp.MustCompile(`result=found signature=` + regexp.QuoteMeta(clamd.Signature)).MatchString(log) {
			t.Errorf("lmtpd did not log the signature:\n%s", log)
		}
	})

	t.Run("quarantine", func(t *testing.T) {
		virus := peerID("quarantine-virus")
		rcpts := []string{"alice@quarantine.test", "bob@quarantine.test"}
		qid := peerSend(t, pf, virus, peerMessage(virus, "team@quarantine.test", scanE2EEicar), rcpts...)
		var keys []string
		for _, r := range rcpts {
			keys = append(keys, peerSent(t, pf, qid, r))
		}
		p, data := peerOnlyCopy(t, quarantine, virus)
		if v, want := peerHeader(data, "X-Virus-Status"), "Infected ("+clamd.Signature+")"; v != want {
			t.Errorf("quarantined copy: X-Virus-Status: %q, want %q", v, want)
		}
		if enc := base64.StdEncoding.EncodeToString(scanE2EEicar)[:76]; !bytes.Contains(data, []byte(enc)) {
			t.Errorf("the quarantined copy lacks the attachment")
		}
		if keys[0] != filepath.Base(p) || keys[1] != keys[0] {
			t.Errorf("Postfix logged keys %q, the quarantine holds %s", keys, filepath.Base(p))
		}
		if f := peerFiles(t, quarantine); len(f) != 1 {
			t.Errorf("quarantine holds %q, want one file", f)
		}
		for _, r := range rcpts {
			if f := peerFiles(t, maildir(r)); len(f) != 0 {
				t.Errorf("%s: the recipient's Maildir holds %q", r, f)
			}
		}
		if f := peerFiles(t, filepath.Join(w.root, "quarantine.test")); len(f) != 0 {
			t.Errorf("files under quarantine.test: %q", f)
		}
		if log := string(readFile(t, dQuar.log)); !strings.Contains(log, "signature="+clamd.Signature) {
			t.Errorf("lmtpd did not log the signature:\n%s", log)
		}
	})

	t.Run("tag", func(t *testing.T) {
		clean, virus := peerID("tag-clean"), peerID("tag-virus")
		qVirus := peerSend(t, pf, virus, peerMessage(virus, "alice@tag.test", scanE2EEicar), "alice@tag.test")
		qClean := peerSend(t, pf, clean, peerMessage(clean, "bob@tag.test", scanE2EClean), "bob@tag.test")
		peerSent(t, pf, qVirus, "alice@tag.test")
		peerSent(t, pf, qClean, "bob@tag.test")
		for _, c := range []struct{ rcpt, id, want string }{
			{"alice@tag.test", virus, "Infected (" + clamd.Signature + ")"},
			{"bob@tag.test", clean, "Clean"},
		} {
			_, data := peerOnlyCopy(t, maildir(c.rcpt), c.id)
			if v := peerHeader(data, "X-Virus-Status"); v != c.want {
				t.Errorf("%s: X-Virus-Status: %q, want %q", c.rcpt, v, c.want)
			}
			if n := bytes.Count(data, []byte("X-Virus-Status:")); n != 1 {
				t.Errorf("%s: %d X-Virus-Status fields, want 1", c.rcpt, n)
			}
		}
	})

	if lines := pf.Lines(regexp.MustCompile(`(warning|fatal|panic):`)); len(lines) != 0 {
		t.Errorf("Postfix warnings:\n%s", strings.Join(lines, "\n"))
	}
}

// TestScanE2EClamdDown: clamd hung (SIGSTOP) with scan.timeout = "2s":
// the message is deferred with 451 4.7.1 once the deadline fires, and
// delivered once after SIGCONT. clamd killed: deferred with 451 4.7.1 at
// once, nothing stored, nothing bounced; clamd started again (same
// configuration, socket and port) and the queue flushed: delivered exactly
// once to each recipient.
func TestScanE2EClamdDown(t *testing.T) {
	t.Parallel()
	av := clamd.StartT(t, clamd.Options{})
	w := newPeerWorld(t)
	w.scanE2EUsers("example.test")
	lmtp, d := w.lmtpd("lmtpd", "10M", w.scanE2EConfig(av.UnixAddress(), `action = "reject"`)...)
	pf := peerStartPostfix(t, lmtp, []string{"example.test"})
	maildir := func(r string) string { return peerMaildir(w.root, r) }
	rcpts := []string{"alice@example.test", "bob@example.test"}

	// Deferred, not bounced, nothing stored; then flushed once clamd is
	// back: sent exactly once.
	outage := func(t *testing.T, tag string, down, up func()) {
		id := peerID(tag)
		down()
		start := time.Now()
		qid := peerSend(t, pf, id, peerMessage(id, "team@example.test", scanE2EClean), rcpts...)
		for _, r := range rcpts {
			pf.WaitLog(t, peerLine(qid, r, scanE2EDeferRE), 1, peerWait)
		}
		took := time.Since(start)
		peerNoBounce(t, pf, qid)
		for _, r := range rcpts {
			if c := peerCopies(t, maildir(r), id); len(c) != 0 {
				t.Fatalf("%s: stored %q unscanned", r, c)
			}
			wantEmpty(t, filepath.Join(maildir(r), "tmp"))
		}
		if n := peerCount(pf, qid+`: .*status=sent`); n != 0 {
			t.Fatalf("%d recipients sent while clamd was down", n)
		}
		t.Logf("%s: deferred after %v", tag, took)
		up()
		peerDeliveredOnce(t, pf, qid, id, maildir, rcpts...)
		peerNoBounce(t, pf, qid)
	}

	t.Run("hung", func(t *testing.T) {
		var stopped time.Time
		outage(t, "hung", func() { av.Stop(); stopped = time.Now() }, func() {
			// The deadline, not something else, ended the scan.
			if d := time.Since(stopped); d < 2*time.Second {
				t.Errorf("deferred %v after SIGSTOP, before scan.timeout (2s)", d)
			}
			av.Cont()
		})
		if log := string(readFile(t, d.log)); !strings.Contains(log, "i/o timeout") {
			t.Errorf("lmtpd did not log the timeout of the scan:\n%s", log)
		}
	})

	t.Run("killed", func(t *testing.T) {
		outage(t, "killed", av.Kill, func() { scanE2ERelaunch(t, av) })
		if log := string(readFile(t, d.log)); !regexp.MustCompile(`result=unavailable .*connect`).MatchString(log) {
			t.Errorf("lmtpd did not log the failed connection to clamd:\n%s", log)
		}
	})
}

// scanE2ERelaunch starts clamd again after av.Kill, with the configuration
// the harness wrote (same socket, TCP port and database), as the same
// user, and waits until it answers PING; the test's cleanup kills it by
// PID.
func scanE2ERelaunch(t *testing.T, av *clamd.Instance) {
	t.Helper()
	prog := testenv.Require(t, "clamav-daemon", "clamd")[0]
	args := []string{prog, "--config-file=" + filepath.Join(av.Dir, "clamd.conf")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("clamav")
		if err != nil {
			t.Fatal(err)
		}
		setpriv, err := testenv.LookPath("setpriv")
		if err != nil {
			t.Fatal(err)
		}
		args = append([]string{setpriv, "--reuid", u.Uid, "--regid", u.Gid, "--clear-groups", "--"}, args...)
	}
	// The killed clamd left its socket file behind.
	os.Remove(av.Socket)
	out, err := os.Create(filepath.Join(av.Dir, "clamd-relaunched.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := scanE2EPing(av.Socket)
		if err == nil {
			return
		}
		select {
		case <-done:
			t.Fatalf("relaunched clamd exited: %v\n%s", cmd.ProcessState, av.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("relaunched clamd does not answer: %v\n%s", err, av.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scanE2EPing sends zPING on clamd's socket and expects PONG.
func scanE2EPing(socket string) error {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("zPING\x00")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, _ := c.Read(buf)
	if string(buf[:n]) != "PONG\x00" {
		return fmt.Errorf("PING: reply %q", buf[:n])
	}
	return nil
}

// scanE2EBig is a message of about size bytes with Message-ID id whose
// body is text (no attachment).
func scanE2EBig(id, to string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@remote.test\r\nTo: %s\r\nSubject: big %s\r\nMessage-ID: <%s>\r\n\r\n", to, id, id)
	for b.Len() < size {
		b.WriteString("The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij.\r\n")
	}
	return b.Bytes()
}

// TestScanE2ETooLarge: clamd with StreamMaxLength 1M, and 1.5 MB messages.
//
//   - on_too_large = "skip", stream_max_length = "1M" (clamd's setting),
//     lmtp.max_message_size = "4M": nfsdrop stops streaming at 1M and
//     delivers the message with X-Virus-Status: Unscanned (too large).
//   - on_too_large = "tempfail": the configuration check refuses
//     stream_max_length (1M) below lmtp.max_message_size (4M), since a
//     message in between could never be delivered. With both at 2M (so
//     clamd's own 1M limit is what refuses the stream, "INSTREAM size
//     limit exceeded"), the message is deferred with 451 4.7.1 and not
//     stored.
func TestScanE2ETooLarge(t *testing.T) {
	t.Parallel()
	av := clamd.StartT(t, clamd.Options{StreamMaxLength: "1M"})
	w := newPeerWorld(t)
	w.scanE2EUsers("skip.test", "temp.test")

	// The combination the validation forbids.
	bad := w.config("bad", append(w.scanE2EConfig(av.UnixAddress(), `stream_max_length = "1M"`, `on_too_large = "tempfail"`),
		peerLMTPSection(loopback(t), "4M"))...)
	r := w.run(nil, nil, "check", "-c", bad)
	wantCode(t, r, exConfig)
	if !strings.Contains(r.stderr, "scan.stream_max_length") || !strings.Contains(r.stderr, "lmtp.max_message_size") {
		t.Errorf("nfsdrop check: the error does not name the keys:\n%s", r)
	}

	skip, dSkip := w.lmtpd("skip", "4M", w.scanE2EConfig(av.UnixAddress(), `stream_max_length = "1M"`, `on_too_large = "skip"`)...)
	temp, dTemp := w.lmtpd("temp", "2M", w.scanE2EConfig(av.UnixAddress(), `stream_max_length = "2M"`, `on_too_large = "tempfail"`)...)
	pf := peerStartPostfix(t, skip, []string{"skip.test", "temp.test"}, "temp.test=lmtp:inet:"+temp)
	const size = 1536 << 10

	skipID, tempID := peerID("too-large-skip"), peerID("too-large-temp")
	qSkip := peerSend(t, pf, skipID, scanE2EBig(skipID, "alice@skip.test", size), "alice@skip.test")
	qTemp := peerSend(t, pf, tempID, scanE2EBig(tempID, "alice@temp.test", size), "alice@temp.test")

	peerSent(t, pf, qSkip, "alice@skip.test")
	_, data := peerOnlyCopy(t, peerMaildir(w.root, "alice@skip.test"), skipID)
	if v := peerHeader(data, "X-Virus-Status"); v != "Unscanned (too large)" {
		t.Errorf("skipped message: X-Virus-Status: %q, want \"Unscanned (too large)\"", v)
	}
	if len(data) < size {
		t.Errorf("stored %d bytes, sent %d", len(data), size)
	}
	if log := string(readFile(t, dSkip.log)); !strings.Contains(log, "result=skipped") {
		t.Errorf("lmtpd did not log the skipped scan:\n%s", log)
	}

	pf.WaitLog(t, peerLine(qTemp, "alice@temp.test", scanE2EDeferRE), 1, peerWait)
	peerNoBounce(t, pf, qTemp)
	if f := peerFiles(t, filepath.Join(w.root, "temp.test")); len(f) != 0 {
		t.Errorf("a message clamd would not scan was stored: %q", f)
	}
	if log := string(readFile(t, dTemp.log)); !strings.Contains(log, "result=too_large") || !strings.Contains(log, "size limit exceeded") {
		t.Errorf("lmtpd did not log clamd's size limit:\n%s", log)
	}
	if out := av.Log(); !strings.Contains(out, "size limit exceeded") && !strings.Contains(out, "Size limit") {
		t.Logf("clamd's log does not mention its size limit:\n%s", out)
	}
}

// TestScanE2EDeliver: "nfsdrop deliver" with scanning: a virus exits 69
// (EX_UNAVAILABLE, Postfix bounces) naming the signature on stderr and
// stores nothing; a clean message is stored; with clamd killed the exit is
// 75 (EX_TEMPFAIL, Postfix retries) and nothing is stored.
func TestScanE2EDeliver(t *testing.T) {
	t.Parallel()
	av := clamd.StartT(t, clamd.Options{})
	w := newPeerWorld(t)
	w.scanE2EUsers("example.test")
	cfg := w.config("deliver", append(w.scanE2EConfig(av.UnixAddress(), `action = "reject"`),
		peerLMTPSection(loopback(t), "10M"))...)
	box := peerMaildir(w.root, "alice@example.test")

	virus := peerID("deliver-virus")
	r := w.run(peerMessage(virus, "alice@example.test", scanE2EEicar), nil, deliverArgs(cfg, "sender@remote.test", "alice@example.test")...)
	wantCode(t, r, exUnavailable)
	if !strings.Contains(r.stderr, clamd.Signature) {
		t.Errorf("stderr does not name the signature %s:\n%s", clamd.Signature, r)
	}
	if f := peerFiles(t, w.root); len(f) != 0 {
		t.Errorf("infected message stored: %q", f)
	}

	clean := peerID("deliver-clean")
	r = w.run(peerMessage(clean, "alice@example.test", scanE2EClean), nil, deliverArgs(cfg, "sender@remote.test", "alice@example.test")...)
	wantCode(t, r, exOK)
	peerOnlyCopy(t, box, clean)

	av.Kill()
	down := peerID("deliver-down")
	r = w.run(peerMessage(down, "alice@example.test", scanE2EClean), nil, deliverArgs(cfg, "sender@remote.test", "alice@example.test")...)
	wantCode(t, r, exTempFail)
	if !strings.Contains(r.stderr, "virus scanner unavailable") {
		t.Errorf("stderr does not say the scanner is unavailable:\n%s", r)
	}
	if c := peerCopies(t, box, down); len(c) != 0 {
		t.Errorf("stored %q without a scan", c)
	}
	wantEmpty(t, filepath.Join(box, "tmp"))
}
