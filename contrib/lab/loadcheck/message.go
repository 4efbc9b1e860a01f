// Package loadcheck is a consistency-checking load generator for nfsdrop
// behind a load balancer: it submits numbered, checksummed messages over
// SMTP to a Postfix that delivers them over LMTP, runs POP3 clients that
// keep or delete mail, follows Postfix's mail log, and at the end checks
// what was promised against what the POP3 servers and the store show:
// nothing lost, nothing stored twice unless Postfix itself resent it after
// a lost reply, nothing back after a committed DELE, UIDLs that never
// change, and locks that are recovered.
//
// It can also deliver straight over LMTP (no Postfix, no mail log), spread
// POP3 sessions over several servers and run IMAP clients (Dovecot) that
// change flags and expunge on the same Maildirs (Config.LMTPAddr,
// POP3Addrs, IMAPAddr; cmd/nfsdrop's TestDovecotLoad).
//
// It knows nothing about virtual machines: the caller gives it a dialer,
// the addresses, the mail log and, at the end, the files it found in the
// store (Scan). contrib/lab's RunScaleOut drives it with faults.
package loadcheck

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Header names of a generated message.
const (
	TokenHeader = "X-Loadcheck-Token"
	SumHeader   = "X-Loadcheck-SHA256"
)

// Compose makes message seq of a run: a unique token (run-seq), a body of
// about size bytes derived from the token, and the sha256 of the body in a
// header. Lines are short, never start with a dot and never end in white
// space, so that no transport changes them except for line ends.
func Compose(run string, seq int, from, to string, size int, now time.Time) (token string, msg []byte) {
	token = fmt.Sprintf("%s-%06d", run, seq)
	var body bytes.Buffer
	h := sha256.Sum256([]byte(token))
	for i := 0; body.Len() < size || i == 0; i++ {
		fmt.Fprintf(&body, "%s line %04d %x\n", token, i, h[:(i%16)+8])
	}
	sum := sha256.Sum256(body.Bytes())
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: loadcheck %s\r\nMessage-ID: <%s@loadcheck.lab.test>\r\nDate: %s\r\n%s: %s\r\n%s: %s\r\n\r\n",
		from, to, token, token, now.Format(time.RFC1123Z), TokenHeader, token, SumHeader, hex.EncodeToString(sum[:]))
	b.Write(bytes.ReplaceAll(body.Bytes(), []byte("\n"), []byte("\r\n")))
	return token, b.Bytes()
}

// Parsed is what Parse finds in a stored or retrieved message.
type Parsed struct {
	Token string
	// Intact is true when the body's sha256 is the one in the header.
	Intact bool
	// Host is the nfsdrop machine that stored it, from its Received
	// header ("by mx1.test (nfsdrop)").
	Host string
	// Copy identifies the stored copy: host and LMTP transaction id from
	// nfsdrop's Received header, different for every delivery of the
	// same message.
	Copy string
	// Problem explains a message that is not intact.
	Problem string
}

var receivedBy = regexp.MustCompile(`\bby (\S+) \(nfsdrop\) with \S+(?: id (\S+))?`)

// ParseHeader reads the token and the copy from a header section alone
// (TOP n 0, IMAP header fields): the body cannot be checked.
func ParseHeader(head []byte) Parsed {
	var p Parsed
	head = bytes.ReplaceAll(head, []byte("\r\n"), []byte("\n"))
	for _, line := range strings.Split(string(head), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, TokenHeader) {
			p.Token = strings.TrimSpace(v)
		}
	}
	if m := receivedBy.FindSubmatch(head); m != nil {
		p.Host = string(m[1])
		p.Copy = string(m[1]) + " " + string(m[2])
	}
	return p
}

// Parse reads a message as stored (LF) or as retrieved (CRLF).
func Parse(data []byte) Parsed {
	data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	var p Parsed
	head, body, ok := bytes.Cut(data, []byte("\n\n"))
	if !ok {
		p.Problem = "no header/body separator"
		return p
	}
	var sum string
	for _, line := range strings.Split(string(head), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case strings.EqualFold(k, TokenHeader):
			p.Token = strings.TrimSpace(v)
		case strings.EqualFold(k, SumHeader):
			sum = strings.TrimSpace(v)
		}
	}
	if m := receivedBy.FindSubmatch(head); m != nil {
		p.Host = string(m[1])
		p.Copy = string(m[1]) + " " + string(m[2])
	}
	if p.Token == "" {
		p.Problem = "no " + TokenHeader
		return p
	}
	got := sha256.Sum256(body)
	if hex.EncodeToString(got[:]) != sum {
		p.Problem = fmt.Sprintf("body sha256 %x, header says %s (%d body bytes)", got[:6], sum, len(body))
		return p
	}
	p.Intact = true
	return p
}
