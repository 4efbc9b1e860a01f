package loadcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// DialFunc connects to addr (the lab dials from its client namespace).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Config configures a load run.
type Config struct {
	Dial DialFunc
	// SMTPAddr is Postfix's smtpd; POP3Addr the POP3 load balancer.
	SMTPAddr, POP3Addr string
	// Users are the recipients and POP3 logins; Password is every user's.
	Users    []string
	Password string
	From     string
	// Run names the run in every token.
	Run string
	// Senders are concurrent SMTP connections (default 2).
	Senders int
	// Rate is the submission rate in messages per second over all
	// senders (0: as fast as MaxOutstanding allows).
	Rate float64
	// MaxOutstanding bounds messages submitted but not yet delivered or
	// bounced according to the mail log (default 40): the load follows
	// what the LMTP servers can take instead of filling Postfix's queue.
	MaxOutstanding int
	// Size is the approximate body size (default 1500 bytes).
	Size int
	// Keepers run sessions that list and read (UIDL, some RETR, QUIT
	// without DELE); Deleters retrieve and delete (RETR, DELE, QUIT).
	// Defaults 2 and 3.
	Keepers, Deleters int
	// UserGroups, when set, splits the users (each one in one group) and
	// gives every group its own Keepers and Deleters, which pick only
	// among its users: the users of one filer each, so that sessions
	// stuck on a hung filer do not take every client from the others.
	UserGroups [][]string
	// RetrPerKeep and RetrPerDelete bound the messages read per session
	// (defaults 3 and 25).
	RetrPerKeep, RetrPerDelete int
	// Pause is the time between a client's sessions (default 200 ms).
	Pause time.Duration
	// RetrPause is a client's think time before each RETR (default 0): it
	// keeps sessions open long enough for other writers (IMAP) to rename
	// listed messages under them.
	RetrPause time.Duration
	// Timeout bounds the wait for each POP3 reply (default 90 s: longer
	// than a filer restart under a hard mount, longer than the load
	// balancer's timeouts).
	Timeout time.Duration
	// Log is Postfix's mail log (needed for MaxOutstanding); nil with
	// LMTPAddr.
	Log *Maillog
	// LMTPAddr, when set, makes the senders deliver straight to an LMTP
	// server (nfsdrop lmtpd) instead of submitting to Postfix at
	// SMTPAddr: the 250 answered for the recipient, with its Maildir key,
	// is the acknowledgement, and no mail log is needed.
	LMTPAddr string
	// POP3Addrs, when set, are several POP3 servers on the same mail root
	// (POP3Addr is then unused): each session picks one.
	POP3Addrs []string
	// IdentifyAll makes every session read the header of every listed
	// message (TOP n 0), tying each listed UIDL to a stored copy: a UIDL
	// that changes between sessions is then seen for every message, not
	// only for retrieved ones.
	IdentifyAll bool
	// IMAPAddr is an IMAP server (Dovecot) on the same Maildirs. IMAP
	// clients (IMAPClients, default 1 when IMAPAddr is set) keep
	// selecting a mailbox, setting and clearing \Seen and \Flagged on a
	// few messages (Dovecot renames their files, and moves new/ to cur/),
	// and in one pass of ExpungeOneIn (default 4) expunging a message.
	IMAPAddr     string
	IMAPClients  int
	ExpungeOneIn int
	// IMAPFlagsPerPass is how many messages a pass changes flags on
	// (default 4).
	IMAPFlagsPerPass int
	Seed             int64
	Logf             func(string, ...any)
}

func (c *Config) defaults() {
	if c.Senders == 0 {
		c.Senders = 2
	}
	if c.MaxOutstanding == 0 {
		c.MaxOutstanding = 40
	}
	if c.Size == 0 {
		c.Size = 1500
	}
	if c.Keepers == 0 && c.Deleters == 0 {
		c.Keepers, c.Deleters = 2, 3
	}
	if c.RetrPerKeep == 0 {
		c.RetrPerKeep = 3
	}
	if c.RetrPerDelete == 0 {
		c.RetrPerDelete = 25
	}
	if c.Pause == 0 {
		c.Pause = 200 * time.Millisecond
	}
	if c.Timeout == 0 {
		c.Timeout = 90 * time.Second
	}
	if c.From == "" {
		c.From = "loadcheck@lab.test"
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if len(c.POP3Addrs) == 0 {
		c.POP3Addrs = []string{c.POP3Addr}
	}
	if c.IMAPAddr != "" && c.IMAPClients == 0 {
		c.IMAPClients = 1
	}
	if c.ExpungeOneIn == 0 {
		c.ExpungeOneIn = 4
	}
	if c.IMAPFlagsPerPass == 0 {
		c.IMAPFlagsPerPass = 4
	}
}

// Submission is one message handed to Postfix over SMTP.
type Submission struct {
	Seq         int
	Token, User string
	QueueID     string // from "250 2.0.0 Ok: queued as ID"
	// Acked and Key, with Config.LMTPAddr: the LMTP server answered 250
	// with this Maildir key.
	Acked bool
	Key   string
	At    time.Time
	Err   string
}

// Retr is one message read in a POP3 session.
type Retr struct {
	N           int
	UIDL, Token string
	// Copy identifies the stored copy: the nfsdrop host and LMTP
	// transaction id of its Received header.
	Copy    string
	Host    string
	Intact  bool
	Problem string
	// Size is what LIST said, Got the octets RETR sent (dot-unstuffed,
	// CRLF line ends); both 0 when RETR failed.
	Size, Got int64
}

// Listed is one message of a session's listing, identified by its header
// (Config.IdentifyAll): Token and Copy are "" when TOP failed.
type Listed struct {
	N           int
	UIDL, Token string
	Copy        string
}

// Session is one POP3 session as the client saw it.
type Session struct {
	ID   int
	User string
	// Mode is "keep", "delete", "drain" or "probe" (UIDL only).
	Mode string
	// Host is the server that answered (from the greeting).
	Host       string
	Start, End time.Time
	// PassSent is when PASS was sent: the listing is made after it.
	// LoginAt is when PASS was answered +OK (zero if not).
	PassSent   time.Time
	LoginAt    time.Time
	LoginReply string
	InUse      bool
	UIDLs      []string
	Listed     []Listed
	Retrs      []Retr
	// Deleted are the UIDLs DELE was answered +OK for.
	Deleted []string
	// Quit is "" (QUIT not sent), "ok", "err" (a -ERR reply) or
	// "noreply" (sent, no answer: the commit may or may not have happened).
	Quit      string
	QuitReply string
	QuitAt    time.Time
	Err       string
}

// Recorder holds everything a run saw; safe for concurrent use.
type Recorder struct {
	mu       sync.Mutex
	subs     []*Submission
	sessions []*Session
	imap     []*IMAPPass
	nextID   int
	Start    time.Time
	LoadEnd  time.Time
}

func (r *Recorder) newSession(user, mode string) *Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	s := &Session{ID: r.nextID, User: user, Mode: mode, Start: time.Now()}
	r.sessions = append(r.sessions, s)
	return s
}

// LoginsBetween counts, per user, the sessions that logged in within
// [start, end), reading the sessions under the recorder's lock (they are
// still being written while the load runs).
func (r *Recorder) LoginsBetween(start, end time.Time) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := map[string]int{}
	for _, s := range r.sessions {
		if !s.LoginAt.IsZero() && !s.LoginAt.Before(start) && s.LoginAt.Before(end) {
			n[s.User]++
		}
	}
	return n
}

func (r *Recorder) set(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

// LoggedIn returns the users of sessions that run on host and hold their
// mailbox (logged in, not ended) now.
func (r *Recorder) LoggedIn(host string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var users []string
	for _, s := range r.sessions {
		if s.Host == host && !s.LoginAt.IsZero() && s.End.IsZero() {
			users = append(users, s.User)
		}
	}
	return users
}

// Sessions returns the sessions so far (do not modify them while a run goes on).
func (r *Recorder) Sessions() []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Session(nil), r.sessions...)
}

// Submissions returns the submissions so far.
func (r *Recorder) Submissions() []*Submission {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Submission(nil), r.subs...)
}

// Dump writes every submission and session as JSON, for a closer look
// after a run.
func (r *Recorder) Dump(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(struct {
		Start, LoadEnd time.Time
		Submissions    []*Submission
		Sessions       []*Session
		IMAP           []*IMAPPass
	}{r.Start, r.LoadEnd, r.subs, r.sessions, r.imap}, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Load is a running load: Stop ends it.
type Load struct {
	cfg    Config
	Rec    *Recorder
	cancel context.CancelFunc
	wg     sync.WaitGroup
	seqMu  sync.Mutex
	seq    int
}

// Start starts the senders and POP3 clients.
func Start(ctx context.Context, cfg Config) (*Load, error) {
	cfg.defaults()
	if cfg.Dial == nil || len(cfg.Users) == 0 || (cfg.Log == nil && cfg.LMTPAddr == "") {
		return nil, errors.New("loadcheck: Dial, Users and Log (or LMTPAddr) are required")
	}
	ctx, cancel := context.WithCancel(ctx)
	ld := &Load{cfg: cfg, Rec: &Recorder{Start: time.Now()}, cancel: cancel}
	var tick <-chan time.Time
	if cfg.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
		tick = t.C
		go func() { <-ctx.Done(); t.Stop() }()
	}
	for i := 0; i < cfg.Senders; i++ {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.sender(ctx, tick) }()
	}
	groups := cfg.UserGroups
	if len(groups) == 0 {
		groups = [][]string{cfg.Users}
	}
	for g, users := range groups {
		for i := 0; i < cfg.Keepers+cfg.Deleters; i++ {
			mode := "keep"
			if i >= cfg.Keepers {
				mode = "delete"
			}
			rnd := rand.New(rand.NewSource(cfg.Seed + int64(g*1000+i)*7919))
			ld.wg.Add(1)
			go func() { defer ld.wg.Done(); ld.popClient(ctx, mode, users, rnd) }()
		}
	}
	for i := 0; i < cfg.IMAPClients; i++ {
		rnd := rand.New(rand.NewSource(cfg.Seed + int64(i)*104729 + 1))
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.imapClient(ctx, rnd) }()
	}
	return ld, nil
}

// Stop ends the load and waits for every sender and session to finish.
func (ld *Load) Stop() {
	ld.cancel()
	ld.wg.Wait()
	ld.Rec.mu.Lock()
	ld.Rec.LoadEnd = time.Now()
	ld.Rec.mu.Unlock()
}

// outstanding counts submissions without a final status in the mail log
// (none over LMTP: the reply is the final status).
func (ld *Load) outstanding() int {
	if ld.cfg.Log == nil {
		return 0
	}
	n := 0
	for _, s := range ld.Rec.Submissions() {
		if s.Err != "" {
			continue
		}
		if s.QueueID == "" || !ld.cfg.Log.Final(s.QueueID) {
			n++
		}
	}
	return n
}

func (ld *Load) sender(ctx context.Context, tick <-chan time.Time) {
	var c *smtp.Client
	defer func() {
		if c != nil {
			c.Quit()
			c.Close()
		}
	}()
	for ctx.Err() == nil {
		if tick != nil {
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		}
		for ld.outstanding() >= ld.cfg.MaxOutstanding {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		if c == nil {
			addr := ld.cfg.SMTPAddr
			if ld.cfg.LMTPAddr != "" {
				addr = ld.cfg.LMTPAddr
			}
			conn, err := ld.cfg.Dial(ctx, "tcp", addr)
			if err != nil {
				ld.cfg.Logf("loadcheck: smtp dial: %v", err)
				time.Sleep(time.Second)
				continue
			}
			if ld.cfg.LMTPAddr != "" {
				c = smtp.NewClientLMTP(conn)
			} else {
				c = smtp.NewClient(conn)
			}
			if err := c.Hello("loadcheck.lab.test"); err != nil {
				c.Close()
				c = nil
				continue
			}
		}
		ld.seqMu.Lock()
		ld.seq++
		seq := ld.seq
		ld.seqMu.Unlock()
		user := ld.cfg.Users[(seq-1)%len(ld.cfg.Users)]
		token, msg := Compose(ld.cfg.Run, seq, ld.cfg.From, user, ld.cfg.Size+(seq%7)*300, time.Now())
		sub := &Submission{Seq: seq, Token: token, User: user, At: time.Now()}
		var err error
		if ld.cfg.LMTPAddr != "" {
			sub.Key, err = deliverLMTP(c, ld.cfg.From, user, msg)
			sub.Acked = err == nil
		} else {
			sub.QueueID, err = submit(c, ld.cfg.From, user, msg)
		}
		if err != nil {
			sub.Err = err.Error()
			c.Close()
			c = nil
		}
		ld.Rec.mu.Lock()
		ld.Rec.subs = append(ld.Rec.subs, sub)
		ld.Rec.mu.Unlock()
	}
}

// sendData sends MAIL, RCPT (a refusal resets the transaction, so the
// connection serves the next message) and DATA with msg, and returns the
// DATA command for the caller to close and read the reply it needs (SMTP:
// one reply with the queue ID; LMTP: one per recipient).
func sendData(c *smtp.Client, from, to string, msg []byte) (*smtp.DataCommand, error) {
	if err := c.Mail(from, nil); err != nil {
		c.Reset()
		return nil, err
	}
	if err := c.Rcpt(to, nil); err != nil {
		c.Reset()
		return nil, err
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(msg); err != nil {
		return nil, err
	}
	return w, nil
}

// submit sends one message over SMTP and returns the queue ID of the reply.
func submit(c *smtp.Client, from, to string, msg []byte) (string, error) {
	w, err := sendData(c, from, to, msg)
	if err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_, qid, _ := strings.Cut(resp.StatusText, "queued as ")
	return strings.TrimSpace(qid), nil
}

// savedKeyRE finds the Maildir key in nfsdrop's LMTP 250 reply
// ("2.0.0 <rcpt> <KEY> Saved").
var savedKeyRE = regexp.MustCompile(`<([^<>]+)> Saved`)

// deliverLMTP sends one message to one recipient over LMTP and returns the
// Maildir key of the 250 reply.
func deliverLMTP(c *smtp.Client, from, to string, msg []byte) (string, error) {
	w, err := sendData(c, from, to, msg)
	if err != nil {
		return "", err
	}
	resp, err := w.CloseWithLMTPResponse()
	if err != nil {
		return "", err
	}
	r, ok := resp[to]
	if !ok {
		return "", fmt.Errorf("LMTP: no reply for %s", to)
	}
	m := savedKeyRE.FindStringSubmatch(r.StatusText)
	if m == nil {
		return "", fmt.Errorf("LMTP: 250 without a Maildir key: %q", r.StatusText)
	}
	return m[1], nil
}

func (ld *Load) popClient(ctx context.Context, mode string, users []string, rnd *rand.Rand) {
	for ctx.Err() == nil {
		user := users[rnd.Intn(len(users))]
		max := ld.cfg.RetrPerKeep
		if mode == "delete" {
			max = ld.cfg.RetrPerDelete
		}
		ld.session(ctx, user, mode, max, rnd, ld.cfg.Timeout)
		select {
		case <-ctx.Done():
		case <-time.After(ld.cfg.Pause):
		}
	}
}

// session runs one POP3 session and records it. The context only stops
// new sessions: a session in progress runs to its end (its outcome must
// be known), bounded by the reply timeout.
func (ld *Load) session(_ context.Context, user, mode string, maxRetr int, rnd *rand.Rand, timeout time.Duration) *Session {
	s := ld.Rec.newSession(user, mode)
	defer func() { ld.Rec.set(func() { s.End = time.Now() }) }()
	addr := ld.cfg.POP3Addrs[s.ID%len(ld.cfg.POP3Addrs)]
	if rnd != nil {
		addr = ld.cfg.POP3Addrs[rnd.Intn(len(ld.cfg.POP3Addrs))]
	}
	p, greet, err := dialPOP3(context.Background(), ld.cfg.Dial, addr, timeout)
	if err != nil {
		s.Err = err.Error()
		return s
	}
	defer p.Close()
	if f := strings.Fields(greet); len(f) > 1 {
		ld.Rec.set(func() { s.Host = f[1] })
	}
	if st, err := p.cmd("USER %s", user); err != nil || !strings.HasPrefix(st, "+OK") {
		s.Err = fmt.Sprintf("USER: %q %v", st, err)
		return s
	}
	ld.Rec.set(func() { s.PassSent = time.Now() })
	st, err := p.cmd("PASS %s", ld.cfg.Password)
	if err != nil {
		s.Err = fmt.Sprintf("PASS: %v", err)
		return s
	}
	if !strings.HasPrefix(st, "+OK") {
		s.LoginReply = st
		s.InUse = strings.Contains(st, "[IN-USE]")
		p.cmd("QUIT")
		return s
	}
	ld.Rec.set(func() { s.LoginAt = time.Now() })
	sizes, err := p.list()
	if err != nil {
		s.Err = "LIST: " + err.Error()
		return s
	}
	uidls, err := p.uidl()
	if err != nil {
		s.Err = "UIDL: " + err.Error()
		return s
	}
	if len(sizes) != len(uidls) {
		s.Err = fmt.Sprintf("LIST has %d messages, UIDL %d", len(sizes), len(uidls))
		return s
	}
	s.UIDLs = uidls
	if ld.cfg.IdentifyAll {
		if err := identify(p, s); err != nil {
			s.Err = "TOP: " + err.Error()
			return s
		}
	}
	// Which messages: a keeper reads a few at random, a deleter the
	// oldest ones, a drain all of them.
	var pick []int
	switch mode {
	case "probe":
	case "keep":
		for _, i := range rnd.Perm(len(uidls)) {
			if len(pick) == maxRetr {
				break
			}
			pick = append(pick, i+1)
		}
	default:
		for i := range uidls {
			if maxRetr > 0 && len(pick) == maxRetr {
				break
			}
			pick = append(pick, i+1)
		}
	}
	sort.Ints(pick)
	for _, n := range pick {
		if ld.cfg.RetrPause > 0 {
			time.Sleep(ld.cfg.RetrPause)
		}
		body, err := p.retr(n)
		r := Retr{N: n, UIDL: uidls[n-1]}
		if err == nil {
			r.Size, r.Got = sizes[n-1], int64(len(body))
		}
		if err != nil {
			s.Err = err.Error()
			if errors.Is(err, errNoReply) {
				return s
			}
			r.Problem = err.Error()
			s.Retrs = append(s.Retrs, r)
			continue
		}
		m := Parse(body)
		r.Token, r.Intact, r.Host, r.Copy, r.Problem = m.Token, m.Intact, m.Host, m.Copy, m.Problem
		s.Retrs = append(s.Retrs, r)
		if mode == "delete" && m.Intact {
			st, err := p.cmd("DELE %d", n)
			if err != nil {
				s.Err = "DELE: " + err.Error()
				return s
			}
			if strings.HasPrefix(st, "+OK") {
				s.Deleted = append(s.Deleted, uidls[n-1])
			}
		}
	}
	st, err = p.cmd("QUIT")
	s.QuitAt = time.Now()
	s.QuitReply = st
	switch {
	case err != nil:
		s.Quit = "noreply"
	case strings.HasPrefix(st, "+OK"):
		s.Quit = "ok"
	default:
		s.Quit = "err"
	}
	return s
}

// identify reads the header of every listed message (TOP n 0) and ties
// its UIDL to the stored copy. A -ERR (the message could not be read) leaves
// it unidentified; no reply ends the session.
func identify(p *pop3Conn, s *Session) error {
	for i, u := range s.UIDLs {
		l := Listed{N: i + 1, UIDL: u}
		st, err := p.cmd("TOP %d 0", i+1)
		if err != nil {
			return err
		}
		if strings.HasPrefix(st, "+OK") {
			head, err := p.multi()
			if err != nil {
				return err
			}
			h := ParseHeader(head)
			l.Token, l.Copy = h.Token, h.Copy
		}
		s.Listed = append(s.Listed, l)
	}
	return nil
}

// probeTimeout bounds the wait for each reply of a probe session.
const probeTimeout = 15 * time.Second

// Probe logs in as user (UIDL, QUIT) until a login succeeds or limit
// passes, and returns when it succeeded (zero if not): how long a mailbox
// whose session died with its machine stays locked.
func (ld *Load) Probe(ctx context.Context, user string, limit time.Duration) time.Time {
	deadline := time.Now().Add(limit)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		// A probe never deletes, so its outcome need not be waited for
		// as long as a session's: a short reply timeout keeps a probe
		// that reached a machine killed meanwhile from hanging past the
		// recovery it is there to see.
		s := ld.session(ctx, user, "probe", 0, nil, probeTimeout)
		if !s.LoginAt.IsZero() {
			return s.LoginAt
		}
		time.Sleep(time.Second)
	}
	return time.Time{}
}

// Drain reads every user's whole mailbox once (UIDL, RETR of every
// message, QUIT without DELE), retrying a mailbox in use until limit. The
// sessions are recorded like the load's.
func (ld *Load) Drain(ctx context.Context, limit time.Duration) []*Session {
	var out []*Session
	for _, u := range ld.cfg.Users {
		deadline := time.Now().Add(limit)
		for {
			s := ld.session(ctx, u, "drain", 0, nil, ld.cfg.Timeout)
			if !s.LoginAt.IsZero() && s.Quit == "ok" && s.Err == "" {
				out = append(out, s)
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				out = append(out, s)
				break
			}
			time.Sleep(time.Second)
		}
	}
	return out
}

// Submitted reports how many messages were handed to Postfix (with and
// without an error) so far.
func (ld *Load) Submitted() (ok, failed int) {
	for _, s := range ld.Rec.Submissions() {
		if s.Err == "" {
			ok++
		} else {
			failed++
		}
	}
	return
}

// Outstanding is how many accepted messages have no final status yet.
func (ld *Load) Outstanding() int { return ld.outstanding() }
