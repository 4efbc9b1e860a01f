package main

// Helpers shared by ldap_e2e_test.go and scan_e2e_test.go: the end-to-end
// tests that put the built binary between a private Postfix and a real
// peer (slapd, clamd). A peerWorld is the e2e world of testhelpers_test.go
// (work directory, mail root with its marker, daemons stopped by PID from
// pop3helpers_test.go) whose configurations are written per daemon.
//
// Every identifier here starts with "peer" so as not to collide with the
// other end-to-end tests of this package.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/postfix"
)

// peerHost is the configured hostname (host part of Maildir names).
const peerHost = "drop.test"

// peerWait bounds each wait for a Postfix log line.
const peerWait = 30 * time.Second

type peerWorld struct{ *e2e }

// newPeerWorld makes the work directory and the mail root with its marker;
// no configuration yet.
func newPeerWorld(t *testing.T) *peerWorld {
	t.Helper()
	e := &e2e{t: t, bin: testenv.Binary(t), dir: t.TempDir()}
	e.root = filepath.Join(e.dir, "mail")
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(e.root, e2eMarker), nil)
	e.users = filepath.Join(e.dir, "users")
	return &peerWorld{e}
}

// config writes <dir>/<name>.toml: hostname, [log] and [store], then the
// given sections verbatim. It returns the file's path.
func (w *peerWorld) config(name string, sections ...string) string {
	w.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "hostname = %q\n\n[log]\nlevel = \"debug\"\n\n", peerHost)
	fmt.Fprintf(&b, "[store]\nmail_root = %q\nmount_marker = %q\n\n", w.root, e2eMarker)
	for _, s := range sections {
		b.WriteString(s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	path := filepath.Join(w.dir, name+".toml")
	writeFile(w.t, path, []byte(b.String()))
	return path
}

// peerLMTPSection is an [lmtp] section listening on the TCP address addr
// (host:port), with max_message_size when size is not "".
func peerLMTPSection(addr, size string) string {
	s := fmt.Sprintf("[lmtp]\nlisten = [%q]\n", "tcp:"+addr)
	if size != "" {
		s += fmt.Sprintf("max_message_size = %q\n", size)
	}
	return s
}

// lmtpd writes the configuration name.toml with sections plus an [lmtp]
// section on a free loopback port (max_message_size size, "" for the
// default), starts "nfsdrop lmtpd" with it and waits until it accepts
// connections. It returns the LMTP address and the process.
func (w *peerWorld) lmtpd(name, size string, sections ...string) (string, *proc) {
	w.t.Helper()
	addr := loopback(w.t)
	cfg := w.config(name, append(sections, peerLMTPSection(addr, size))...)
	return addr, w.startDaemon(name, []string{addr}, "lmtpd", "-c", cfg)
}

// peerMaildir is the Maildir of addr for a user without a mailbox of its
// own: <root>/<domain>/<local>/Maildir.
func peerMaildir(root, addr string) string {
	local, domain, _ := strings.Cut(addr, "@")
	return filepath.Join(root, domain, local, "Maildir")
}

// peerCopies returns the paths of the files in maildir's new/ and cur/
// that hold the message with Message-ID id.
func peerCopies(t testing.TB, maildir, id string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"new", "cur"} {
		for _, n := range names(t, filepath.Join(maildir, sub)) {
			p := filepath.Join(maildir, sub, n)
			if bytes.Contains(readFile(t, p), []byte("Message-ID: <"+id+">")) {
				out = append(out, p)
			}
		}
	}
	return out
}

// peerOnlyCopy returns the content of the one file in maildir holding id,
// failing the test when there is not exactly one.
func peerOnlyCopy(t testing.TB, maildir, id string) (string, []byte) {
	t.Helper()
	c := peerCopies(t, maildir, id)
	if len(c) != 1 {
		t.Fatalf("%s holds %d copies of <%s>, want 1: %q", maildir, len(c), id, c)
	}
	return c[0], readFile(t, c[0])
}

// peerFiles lists every regular file below dir (the mount marker left
// out); a missing dir has none.
func peerFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && d.Name() != e2eMarker {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// peerHeader returns the value of the first header field name in a stored
// message ("" when absent). Only the header section is searched.
func peerHeader(data []byte, name string) string {
	head, _, _ := bytes.Cut(data, []byte("\r\n\r\n"))
	for line := range strings.SplitSeq(string(head), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

var peerIDs atomic.Int64

// peerID makes a unique Message-ID (without angle brackets).
func peerID(tag string) string {
	return fmt.Sprintf("%s.%d.%d@e2e.test", tag, os.Getpid(), peerIDs.Add(1))
}

// peerMessage is a small MIME message with Message-ID id: a text part and
// an attachment holding attachment, base64-encoded as mail clients send
// files (so a scanner must decode MIME to see what is in it).
func peerMessage(id, to string, attachment []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <sender@remote.test>\r\nTo: %s\r\nSubject: e2e %s\r\nMessage-ID: <%s>\r\n", to, id, id)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"peer-boundary\"\r\n\r\n")
	b.WriteString("This is a multi-part message in MIME format.\r\n\r\n--peer-boundary\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease find the file attached.\r\n\r\n--peer-boundary\r\n")
	b.WriteString("Content-Type: application/octet-stream; name=\"file.com\"\r\nContent-Transfer-Encoding: base64\r\n")
	b.WriteString("Content-Disposition: attachment; filename=\"file.com\"\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(attachment)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--peer-boundary--\r\n")
	return b.Bytes()
}

// peerStartPostfix starts a private Postfix that hands the virtual
// domains to the LMTP server at lmtp (host:port); routes are extra
// "domain=lmtp:inet:host:port" transport_maps entries.
func peerStartPostfix(t *testing.T, lmtp string, domains []string, routes ...string) *postfix.Instance {
	t.Helper()
	o := postfix.Options{MailboxTransport: "lmtp:inet:" + lmtp, VirtualDomains: domains, RecipientLimit: 20}
	if len(routes) > 0 {
		o.Extra = []string{"transport_maps = inline:{ " + strings.Join(routes, ", ") + " }"}
	}
	pf := postfix.StartT(t, o)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mail log:\n%s", tail([]byte(pf.Log()), 12000))
		}
	})
	return pf
}

// peerSend submits msg (with Message-ID id) to rcpts and returns its queue
// ID.
func peerSend(t *testing.T, pf *postfix.Instance, id string, msg []byte, rcpts ...string) string {
	t.Helper()
	if err := pf.Sendmail("sender@remote.test", rcpts, msg); err != nil {
		t.Fatal(err)
	}
	return pf.QueueID(t, id, peerWait)
}

// peerLine is the regular expression of Postfix's delivery line for rcpt
// of queue ID qid, followed by rest (a regular expression).
func peerLine(qid, rcpt, rest string) *regexp.Regexp {
	return regexp.MustCompile(qid + `: to=<` + regexp.QuoteMeta(rcpt) + `>, .*` + rest)
}

// peerSent waits for rcpt's status=sent line and returns the Maildir key
// lmtpd answered with.
func peerSent(t *testing.T, pf *postfix.Instance, qid, rcpt string) string {
	t.Helper()
	re := peerLine(qid, rcpt, `dsn=2\.0\.0, status=sent \(250 2\.0\.0 <`+regexp.QuoteMeta(rcpt)+`> <([^>]+)> Saved\)`)
	return re.FindStringSubmatch(pf.WaitLog(t, re, 1, peerWait)[0])[1]
}

// peerCount is the number of mail log lines matching re.
func peerCount(pf *postfix.Instance, re string) int {
	return len(pf.Lines(regexp.MustCompile(re)))
}

// peerNoBounce fails the test if Postfix bounced anything of qid.
func peerNoBounce(t *testing.T, pf *postfix.Instance, qid string) {
	t.Helper()
	if lines := pf.Lines(regexp.MustCompile(qid + `: .*status=bounced`)); len(lines) > 0 {
		t.Errorf("Postfix bounced mail that must only be deferred:\n%s", strings.Join(lines, "\n"))
	}
}

// peerDeliveredOnce flushes the queue and checks that each recipient of
// qid is logged sent exactly once, that the message left the queue, and
// that maildir(rcpt) holds exactly one copy of id.
func peerDeliveredOnce(t *testing.T, pf *postfix.Instance, qid, id string, maildir func(string) string, rcpts ...string) {
	t.Helper()
	if err := pf.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		peerSent(t, pf, qid, r)
	}
	pf.WaitLog(t, qid+": removed", 1, peerWait)
	for _, r := range rcpts {
		if n := peerCount(pf, qid+`: to=<`+regexp.QuoteMeta(r)+`>, .*status=sent`); n != 1 {
			t.Errorf("%s: %d status=sent lines, want 1", r, n)
		}
		if c := peerCopies(t, maildir(r), id); len(c) != 1 {
			t.Errorf("%s: %d copies of <%s> stored, want 1: %q", r, len(c), id, c)
		}
	}
}
