package loadcheck

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Delivery is one "status=sent" line of the mail log: Postfix got a 250
// from the LMTP server for a recipient.
type Delivery struct {
	QueueID, Rcpt string
	// Key is the Maildir name nfsdrop answered ("250 2.0.0 <rcpt> <KEY> Saved").
	Key  string
	Line string
}

// Attempt is a "status=deferred" or "status=bounced" line.
type Attempt struct {
	QueueID, Rcpt, Status, Reason string
	// MaybeTwice is Postfix's own warning that the message may have been
	// delivered although it did not see the reply ("message may be sent
	// more than once").
	MaybeTwice bool
}

// Maillog follows Postfix's maillog_file and keeps what the checks need:
// Message-ID (token) to queue ID, and every delivery, deferral and bounce.
type Maillog struct {
	Path string

	mu       sync.Mutex
	off      int64
	partial  []byte
	queueOf  map[string]string // token -> queue ID
	tokenOf  map[string]string // queue ID -> token
	sent     map[string][]Delivery
	attempts map[string][]Attempt
	removed  map[string]bool
	lines    int
}

// NewMaillog follows the mail log at path (which may not exist yet).
func NewMaillog(path string) *Maillog {
	return &Maillog{Path: path, queueOf: map[string]string{}, tokenOf: map[string]string{},
		sent: map[string][]Delivery{}, attempts: map[string][]Attempt{}, removed: map[string]bool{}}
}

var (
	logLineRE   = regexp.MustCompile(`postfix/([a-z]+)\[\d+\]: ([0-9A-Za-z]+): (.*)$`)
	messageIDRE = regexp.MustCompile(`^message-id=<([^@>]+)@loadcheck\.lab\.test>`)
	toRE        = regexp.MustCompile(`^to=<([^>]*)>.*?, status=(\w+) \((.*)\)$`)
	savedRE     = regexp.MustCompile(`^250 2\.0\.0 <[^>]*> <([^>]+)> Saved`)
)

// Poll reads what was appended to the log since the last call.
func (m *Maillog) Poll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := os.Open(m.Path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	defer f.Close()
	if _, err := f.Seek(m.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	m.off += int64(len(b))
	b = append(m.partial, b...)
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		m.partial = b
		return nil
	}
	m.partial = append([]byte(nil), b[last+1:]...)
	for _, line := range strings.Split(string(b[:last]), "\n") {
		m.parse(line)
	}
	return nil
}

func (m *Maillog) parse(line string) {
	lm := logLineRE.FindStringSubmatch(line)
	if lm == nil {
		return
	}
	m.lines++
	prog, qid, rest := lm[1], lm[2], lm[3]
	switch {
	case prog == "cleanup":
		if mm := messageIDRE.FindStringSubmatch(rest); mm != nil {
			m.queueOf[mm[1]] = qid
			m.tokenOf[qid] = mm[1]
		}
	case prog == "qmgr" && rest == "removed":
		m.removed[qid] = true
	case prog == "lmtp" || prog == "error" || prog == "bounce":
		tm := toRE.FindStringSubmatch(rest)
		if tm == nil {
			return
		}
		rcpt, status, reason := tm[1], tm[2], tm[3]
		if status == "sent" {
			d := Delivery{QueueID: qid, Rcpt: rcpt, Line: line}
			if sm := savedRE.FindStringSubmatch(reason); sm != nil {
				d.Key = sm[1]
			}
			m.sent[qid] = append(m.sent[qid], d)
			return
		}
		m.attempts[qid] = append(m.attempts[qid], Attempt{QueueID: qid, Rcpt: rcpt, Status: status, Reason: reason,
			MaybeTwice: strings.Contains(reason, "may be sent more than once")})
	}
}

// QueueID is the queue ID of the message with a token ("" if not logged yet).
func (m *Maillog) QueueID(token string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.queueOf[token]
}

// Sent returns the deliveries of queue ID qid.
func (m *Maillog) Sent(qid string) []Delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Delivery(nil), m.sent[qid]...)
}

// Attempts returns the deferrals and bounces of queue ID qid.
func (m *Maillog) Attempts(qid string) []Attempt {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Attempt(nil), m.attempts[qid]...)
}

// DeferReasons counts the reasons of deferrals and bounces, with numbers
// and addresses left out.
func (m *Maillog) DeferReasons() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for _, as := range m.attempts {
		for _, a := range as {
			r := numbersRE.ReplaceAllString(a.Reason, "N")
			out[a.Status+": "+r]++
		}
	}
	return out
}

var numbersRE = regexp.MustCompile(`[0-9]+(\.[0-9]+)*`)

// Final reports whether qid got a final status (sent or bounced).
func (m *Maillog) Final(qid string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sent[qid]) > 0 {
		return true
	}
	for _, a := range m.attempts[qid] {
		if a.Status == "bounced" {
			return true
		}
	}
	return false
}

// Counts returns how many queue IDs were delivered, deferred at least
// once, and bounced.
func (m *Maillog) Counts() (sent, deferred, bounced int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sent = len(m.sent)
	for _, as := range m.attempts {
		d, b := false, false
		for _, a := range as {
			d = d || a.Status == "deferred"
			b = b || a.Status == "bounced"
		}
		if d {
			deferred++
		}
		if b {
			bounced++
		}
	}
	return
}

// Follow polls the log every interval until stop is closed.
func (m *Maillog) Follow(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.Poll()
		select {
		case <-stop:
			m.Poll()
			return
		case <-t.C:
		}
	}
}

// PerRecipient counts, for each recipient, the deliveries logged so far
// (status=sent: the LMTP server's 250), the deferrals the LMTP server
// answered itself with a 4xx ("said: 4..") and the other deferrals (a
// connection lost or timed out): a runner that polls it every second sees
// per-user rates.
func (m *Maillog) PerRecipient() (sent, tempFailed, otherDeferred map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sent, tempFailed, otherDeferred = map[string]int{}, map[string]int{}, map[string]int{}
	for _, ds := range m.sent {
		for _, d := range ds {
			sent[d.Rcpt]++
		}
	}
	for _, as := range m.attempts {
		for _, a := range as {
			switch {
			case a.Status != "deferred":
			case strings.Contains(a.Reason, "said: 4"):
				tempFailed[a.Rcpt]++
			default:
				otherDeferred[a.Rcpt]++
			}
		}
	}
	return sent, tempFailed, otherDeferred
}
