package loadcheck

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

// StoredFile is a message file found in the store at the end (read on the
// NFS server's side, with the server stopped).
type StoredFile struct {
	User, Dir, Name string
	UIDL            string
	Parsed
}

// ScanMaildirs reads every file in new/ and cur/ of each user's Maildir,
// maildirOf(user) giving its path.
func ScanMaildirs(users []string, maildirOf func(user string) string) ([]StoredFile, []string, error) {
	var files []StoredFile
	var notes []string
	for _, u := range users {
		md := maildirOf(u)
		for _, sub := range []string{"new", "cur"} {
			ents, err := os.ReadDir(filepath.Join(md, sub))
			if err != nil {
				if os.IsNotExist(err) {
					continue
				}
				return nil, nil, err
			}
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") {
					continue
				}
				b, err := os.ReadFile(filepath.Join(md, sub, e.Name()))
				if err != nil {
					return nil, nil, err
				}
				files = append(files, StoredFile{User: u, Dir: sub, Name: e.Name(), UIDL: store.BaseName(e.Name()), Parsed: Parse(b)})
			}
		}
		if ents, err := os.ReadDir(filepath.Join(md, "tmp")); err == nil && len(ents) > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d files left in tmp/ (interrupted deliveries or sessions; the sweeper removes them after store.tmp_max_age)", u, len(ents)))
		}
		// Lstat: the lock is a symlink whose target names no file.
		if _, err := os.Lstat(filepath.Join(md, store.LockName)); err == nil {
			notes = append(notes, fmt.Sprintf("%s: session lock file left behind", u))
		}
	}
	return files, notes, nil
}

// CheckOptions configures Check.
type CheckOptions struct {
	// LockStale is pop3.lock_stale; a mailbox may answer [IN-USE] for at
	// most LockStale+LockMargin at a stretch.
	LockStale, LockMargin time.Duration
	// UIDLFormat is pop3.uidl_format; "" means "maildir". With another
	// format a UIDL need not be the base name of the stored file, so the
	// store's files are tied to sessions by their copy, not by UIDL.
	UIDLFormat string
}

// Report is the outcome of Check.
type Report struct {
	Submitted, SubmitErrors int
	// Accepted have a queue ID (over LMTP: were sent); Acknowledged got
	// "status=sent" (nfsdrop's 250); Deferrals counts messages deferred
	// at least once.
	Accepted, Acknowledged, Deferred int
	// DeliveredBy counts acknowledged deliveries per nfsdrop host (the
	// host part of the Maildir key).
	DeliveredBy map[string]int

	Sessions, Logins, InUseReplies, SessionErrors int
	SessionsBy                                    map[string]int
	Commits, AmbiguousCommits                     int
	Retrievals, DeletedRetrievals                 int
	UIDLSightings                                 int
	FinalInDrain, FinalInStore                    int

	// IMAP clients on the same Maildirs (Config.IMAPAddr): passes,
	// flag changes answered OK and NO, messages expunged, passes that
	// broke off.
	IMAPPasses, IMAPFlagChanges, IMAPStoreErrors, IMAPExpunges, IMAPErrors int

	// The invariants: all must be zero.
	Lost, Resurrected, Doubled, UIDLChanged, Corrupt, LocksNotRecovered int
	Bounced, Undelivered, DrainStoreMismatch, DeletedTwice              int
	// SizeMismatches are retrievals whose octets differ from LIST's size;
	// RetrFailed are RETRs answered -ERR for a listed message that was
	// still stored (IMAP never expunged it).
	SizeMismatches, RetrFailed int
	// RedeliveredExplained counts messages stored twice because Postfix
	// did not see nfsdrop's reply and sent again (its log says "message
	// may be sent more than once"): the price of at-least-once over a
	// connection that breaks after the data, not a store failure.
	RedeliveredExplained int
	// MaxInUse is the longest time a mailbox answered [IN-USE] before a
	// login succeeded, and the user.
	MaxInUse     time.Duration
	MaxInUseUser string
	LockLimit    time.Duration

	// DeferReasons counts Postfix's reasons for deferrals (timeouts,
	// lost connections, temporary errors nfsdrop answered).
	DeferReasons map[string]int
	// LoginErrors counts POP3 login failures other than [IN-USE]
	// (temporary errors), by reply.
	LoginErrors map[string]int

	Problems []string
	Notes    []string
	Duration time.Duration
}

// Violations is the sum of the invariant counters.
func (r *Report) Violations() int {
	return r.Lost + r.Resurrected + r.Doubled + r.UIDLChanged + r.Corrupt + r.LocksNotRecovered +
		r.Bounced + r.Undelivered + r.DrainStoreMismatch + r.DeletedTwice + r.SizeMismatches + r.RetrFailed
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < 60 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// uidlKey names a UIDL in a user's mailbox: UIDLs are unique per mailbox
// only (Dovecot's %08X%08X repeats across mailboxes made in the same
// second).
func uidlKey(user, uidl string) string { return user + " " + uidl }

// copyKey names a stored copy: its token and the host and LMTP id of its
// Received header.
func copyKey(token, cp string) string { return token + " " + cp }

// Check compares what the run was promised with what it saw: rec (the
// load and drain sessions, and IMAP passes), the mail log (nil when the
// load delivered over LMTP), drain (the final sessions, one per user) and
// files (the store as read at the end).
func Check(rec *Recorder, log *Maillog, drain []*Session, files []StoredFile, o CheckOptions) *Report {
	c := newChecker(log, o)
	if log != nil {
		log.Poll()
		c.r.DeferReasons = log.DeferReasons()
	}
	subs := rec.Submissions()
	sessions := rec.Sessions()
	if !rec.LoadEnd.IsZero() {
		c.r.Duration = rec.LoadEnd.Sub(rec.Start)
	}
	c.messages(subs)
	c.imapPasses(rec.IMAPPasses())
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].Start.Before(sessions[j].Start) })
	for _, s := range sessions {
		c.session(s)
	}
	c.deletedTwice()
	c.failedRetrievals()
	c.resurrections(sessions)
	c.locks(sessions)
	inDrain := c.drainState(drain)
	inStore := c.storeState(files)
	c.compareDrainStore(inDrain, inStore)
	c.uidlsNameOneCopy()
	c.lostAndDoubled()
	return c.r
}

// checker holds what Check has learnt so far, phase by phase.
type checker struct {
	r            *Report
	log          *Maillog
	maildirUIDLs bool // UIDLs are the stored files' base names

	// Messages: token -> queue ID (from the log, which also knows
	// messages whose SMTP reply got lost), and what Postfix says became
	// of them.
	msgs   map[string]*checkedMsg
	tokens []string

	// Every stored copy we know of, by its identity (token, host and
	// LMTP id of its Received header): the UIDLs (per user) it was seen
	// under.
	copyUIDLs   map[string]map[string]bool // copy -> UIDL keys
	uidlCopy    map[string]map[string]bool // UIDL key -> copies
	tokenCopies map[string]map[string]bool
	uidlToken   map[string]string // UIDL key -> token retrieved under it

	// IMAP: expunged copies, and when.
	expunged        map[string]Expunge // copy -> the first expunge
	expungedDovecot map[string]time.Time
	expungedToken   map[string]bool

	// Committed deletions: UIDL key -> when the QUIT that removed it was
	// answered +OK, and the same by copy. Taken: tokens a deleting client
	// retrieved intact and asked to delete, with QUIT sent (whatever the
	// answer).
	committed     map[string]time.Time
	committedCopy map[string]time.Time
	committedBy   map[string]int
	taken         map[string]bool
	failed        []failedRetr

	// presentToken: tokens the final drain or the store still holds.
	presentToken map[string]bool
}

// checkedMsg is a submitted message as the checks see it.
type checkedMsg struct {
	token, user, qid string
	acked            bool
	keys             []string
	maybeTwice       bool
	bounced          bool
}

// failedRetr is a RETR that failed without a sign of corruption.
type failedRetr struct {
	s  *Session
	rt Retr
	cp string // the copy the listing named, "" if unknown
}

func newChecker(log *Maillog, o CheckOptions) *checker {
	return &checker{
		r: &Report{DeliveredBy: map[string]int{}, SessionsBy: map[string]int{}, LockLimit: o.LockStale + o.LockMargin,
			DeferReasons: map[string]int{}, LoginErrors: map[string]int{}},
		log:             log,
		maildirUIDLs:    o.UIDLFormat == "" || o.UIDLFormat == store.UIDLMaildir,
		msgs:            map[string]*checkedMsg{},
		copyUIDLs:       map[string]map[string]bool{},
		uidlCopy:        map[string]map[string]bool{},
		tokenCopies:     map[string]map[string]bool{},
		uidlToken:       map[string]string{},
		expunged:        map[string]Expunge{},
		expungedDovecot: map[string]time.Time{},
		expungedToken:   map[string]bool{},
		committed:       map[string]time.Time{},
		committedCopy:   map[string]time.Time{},
		committedBy:     map[string]int{},
		taken:           map[string]bool{},
		presentToken:    map[string]bool{},
	}
}

// see records that the copy cp of token was seen under the UIDL key uk.
func (c *checker) see(token, cp, uk string) {
	if token == "" || cp == "" {
		return
	}
	cp = copyKey(token, cp)
	if c.copyUIDLs[cp] == nil {
		c.copyUIDLs[cp] = map[string]bool{}
	}
	c.copyUIDLs[cp][uk] = true
	if c.uidlCopy[uk] == nil {
		c.uidlCopy[uk] = map[string]bool{}
	}
	c.uidlCopy[uk][cp] = true
	if c.tokenCopies[token] == nil {
		c.tokenCopies[token] = map[string]bool{}
	}
	c.tokenCopies[token][cp] = true
}

// messages finds out what became of each submission.
func (c *checker) messages(subs []*Submission) {
	r := c.r
	for _, s := range subs {
		r.Submitted++
		if s.Err != "" {
			r.SubmitErrors++
		}
		if c.log == nil {
			c.lmtpSubmission(s)
		} else {
			c.loggedSubmission(s)
		}
	}
	sort.Strings(c.tokens)
}

// lmtpSubmission: over LMTP the reply is the final status; a delivery
// without one may or may not be stored.
func (c *checker) lmtpSubmission(s *Submission) {
	r := c.r
	m := &checkedMsg{token: s.Token, user: s.User, acked: s.Acked, maybeTwice: !s.Acked}
	c.msgs[s.Token] = m
	c.tokens = append(c.tokens, s.Token)
	r.Accepted++
	if s.Acked {
		r.Acknowledged++
		m.keys = []string{s.Key}
		if h := hostOfKey(s.Key); h != "" {
			r.DeliveredBy[h]++
		}
	}
}

// loggedSubmission reads a submission's fate from Postfix's mail log.
func (c *checker) loggedSubmission(s *Submission) {
	r, log := c.r, c.log
	qid := s.QueueID
	if qid == "" {
		qid = log.QueueID(s.Token)
	}
	if qid == "" {
		if s.Err == "" {
			r.problem("message %s: accepted over SMTP but not in the mail log", s.Token)
			r.Undelivered++
		}
		return
	}
	m := &checkedMsg{token: s.Token, user: s.User, qid: qid}
	c.msgs[s.Token] = m
	c.tokens = append(c.tokens, s.Token)
	r.Accepted++
	for _, d := range log.Sent(qid) {
		m.acked = true
		m.keys = append(m.keys, d.Key)
		if h := hostOfKey(d.Key); h != "" {
			r.DeliveredBy[h]++
		}
	}
	deferred := false
	for _, a := range log.Attempts(qid) {
		m.maybeTwice = m.maybeTwice || a.MaybeTwice
		deferred = deferred || a.Status == "deferred"
		if a.Status == "bounced" {
			m.bounced = true
		}
	}
	if deferred {
		r.Deferred++
	}
	switch {
	case m.acked:
		r.Acknowledged++
		if len(m.keys) > 1 {
			m.maybeTwice = true // Postfix itself says it sent twice
		}
	case m.bounced:
		r.Bounced++
		r.problem("message %s (%s): bounced: %v", s.Token, qid, log.Attempts(qid))
	default:
		r.Undelivered++
		r.problem("message %s (%s): no final status in the mail log (attempts %v)", s.Token, qid, log.Attempts(qid))
	}
}

// imapPasses counts the IMAP passes and records what they expunged.
func (c *checker) imapPasses(passes []*IMAPPass) {
	r := c.r
	for _, p := range passes {
		r.IMAPPasses++
		r.IMAPFlagChanges += p.FlagChanges
		r.IMAPStoreErrors += p.StoreErrors
		if p.Err != "" {
			r.IMAPErrors++
			if r.IMAPErrors <= 5 {
				r.Notes = append(r.Notes, fmt.Sprintf("IMAP pass %d (%s): %s", p.ID, p.User, p.Err))
			}
		}
		for _, x := range p.Expunged {
			r.IMAPExpunges++
			if x.Token == "" {
				continue
			}
			c.expungedToken[x.Token] = true
			k := copyKey(x.Token, x.Copy)
			if prev, ok := c.expunged[k]; !ok || x.At.Before(prev.At) {
				c.expunged[k] = x
			}
			if !c.maildirUIDLs {
				// With uidl_format "dovecot", nfsdrop may list it
				// under the UIDL Dovecot gives it (not a second name
				// of the copy: nfsdrop may never have listed it so).
				c.expungedDovecot[uidlKey(p.User, x.DovecotUIDL)] = x.At
			}
		}
	}
}

// session checks one POP3 session of the load.
func (c *checker) session(s *Session) {
	c.countSession(s)
	listedCopy := c.listed(s)
	c.retrievals(s, listedCopy)
	if s.Mode == "delete" && s.Quit != "" && len(s.Deleted) > 0 {
		c.deletions(s)
	}
}

func (c *checker) countSession(s *Session) {
	r := c.r
	r.Sessions++
	if s.Host != "" {
		r.SessionsBy[s.Host]++
	}
	if s.InUse {
		r.InUseReplies++
	} else if s.LoginReply != "" {
		r.LoginErrors[s.LoginReply]++
	}
	if s.Err != "" {
		r.SessionErrors++
	}
	if !s.LoginAt.IsZero() {
		r.Logins++
	}
	r.UIDLSightings += len(s.UIDLs)
}

// listed records the copies s's listing named; it returns the copy of
// each message number.
func (c *checker) listed(s *Session) map[int]string {
	r := c.r
	listedCopy := map[int]string{}
	for _, l := range s.Listed {
		if l.Token == "" {
			continue
		}
		c.see(l.Token, l.Copy, uidlKey(s.User, l.UIDL))
		listedCopy[l.N] = copyKey(l.Token, l.Copy)
		if t, ok := c.uidlToken[uidlKey(s.User, l.UIDL)]; ok && t != l.Token {
			r.UIDLChanged++
			r.problem("%s: UIDL %s named %s and %s", s.User, l.UIDL, t, l.Token)
		}
		c.uidlToken[uidlKey(s.User, l.UIDL)] = l.Token
	}
	return listedCopy
}

// retrievals checks s's RETRs: corruption, sizes, UIDLs.
func (c *checker) retrievals(s *Session, listedCopy map[int]string) {
	r := c.r
	for _, rt := range s.Retrs {
		if rt.Problem != "" && !rt.Intact {
			if rt.Token != "" || strings.Contains(rt.Problem, "sha256") || strings.Contains(rt.Problem, "separator") {
				r.Corrupt++
				r.problem("session %d (%s on %s): RETR %d (UIDL %s): %s", s.ID, s.User, s.Host, rt.N, rt.UIDL, rt.Problem)
			} else {
				c.failed = append(c.failed, failedRetr{s: s, rt: rt, cp: listedCopy[rt.N]})
			}
			continue
		}
		r.Retrievals++
		if rt.Got != rt.Size {
			r.SizeMismatches++
			r.problem("session %d (%s on %s): message %d (UIDL %s, %s): LIST said %d octets, RETR sent %d",
				s.ID, s.User, s.Host, rt.N, rt.UIDL, rt.Token, rt.Size, rt.Got)
		}
		uk := uidlKey(s.User, rt.UIDL)
		c.see(rt.Token, rt.Copy, uk)
		if t, ok := c.uidlToken[uk]; ok && t != rt.Token {
			r.UIDLChanged++
			r.problem("%s: UIDL %s named %s and %s", s.User, rt.UIDL, t, rt.Token)
		}
		c.uidlToken[uk] = rt.Token
	}
}

// deletions records what a deleting session that sent QUIT took away.
func (c *checker) deletions(s *Session) {
	r := c.r
	del := map[string]bool{}
	for _, u := range s.Deleted {
		del[u] = true
	}
	var copies []string
	for _, rt := range s.Retrs {
		if rt.Intact && del[rt.UIDL] {
			c.taken[rt.Token] = true
			r.DeletedRetrievals++
			copies = append(copies, copyKey(rt.Token, rt.Copy))
		}
	}
	if s.Quit != "ok" {
		r.AmbiguousCommits++
		return
	}
	r.Commits++
	for u := range del {
		uk := uidlKey(s.User, u)
		c.committedBy[uk]++
		if _, ok := c.committed[uk]; !ok {
			c.committed[uk] = s.QuitAt
		}
	}
	for _, cp := range copies {
		if _, ok := c.committedCopy[cp]; !ok {
			c.committedCopy[cp] = s.QuitAt
		}
	}
}

func (c *checker) deletedTwice() {
	for uk, n := range c.committedBy {
		if n > 1 {
			c.r.DeletedTwice++
			c.r.problem("UIDL %s (%s) retrieved and deleted by %d sessions whose QUIT succeeded", uk, c.uidlToken[uk], n)
		}
	}
}

// failedRetrievals: a RETR that failed although the message was still
// there (IMAP never expunged the copy the listing named): a stale listing.
func (c *checker) failedRetrievals() {
	for _, f := range c.failed {
		if f.cp == "" {
			continue // not identified: cannot tell
		}
		if _, ok := c.expunged[f.cp]; ok {
			continue
		}
		c.r.RetrFailed++
		c.r.problem("session %d (%s on %s): RETR %d (UIDL %s, %s) failed, and IMAP never expunged it: %s",
			f.s.ID, f.s.User, f.s.Host, f.rt.N, f.rt.UIDL, f.cp, f.rt.Problem)
	}
}

// resurrections: a UIDL listed by a session that logged in after the
// QUIT that deleted it was answered, or whose PASS was sent after IMAP
// expunged the copy (no lock orders IMAP and POP3: a listing made while
// PASS was in flight may still show it).
func (c *checker) resurrections(sessions []*Session) {
	r := c.r
	expungedAt := c.expungedDovecot // UIDL key -> expunge time
	for cp, x := range c.expunged {
		for uk := range c.copyUIDLs[cp] {
			expungedAt[uk] = x.At
		}
	}
	for _, s := range sessions {
		if s.LoginAt.IsZero() {
			continue
		}
		for _, u := range s.UIDLs {
			uk := uidlKey(s.User, u)
			if t, ok := c.committed[uk]; ok && s.LoginAt.After(t) {
				r.Resurrected++
				r.problem("UIDL %s (%s) deleted by a QUIT answered at %s, listed again by session %d (%s on %s) logged in at %s",
					u, c.uidlToken[uk], t.Format("15:04:05.000"), s.ID, s.User, s.Host, s.LoginAt.Format("15:04:05.000"))
			}
			if x, ok := expungedAt[uk]; ok && !s.PassSent.IsZero() && s.PassSent.After(x) {
				r.Resurrected++
				r.problem("UIDL %s (%s) expunged by IMAP at %s, listed again by session %d (%s on %s), PASS sent at %s",
					u, c.uidlToken[uk], x.Format("15:04:05.000"), s.ID, s.User, s.Host, s.PassSent.Format("15:04:05.000"))
			}
		}
	}
}

// locks finds the longest stretch of consecutive [IN-USE] answers for a
// user (from the first refused session's start to the last one's end),
// closed by the next successful login. Time while a session that logged
// in was still going on does not count: its lock was rightly held (a
// session held up by a hung filer goes on when the filer answers, and
// its client was still waiting); what the limit bounds is how long a
// lock outlives its session.
func (c *checker) locks(sessions []*Session) {
	c.r.MaxInUse, c.r.MaxInUseUser = longestInUse(sessions)
	r := c.r
	inUseStart := map[string]time.Time{}
	for _, s := range sessions {
		if s.InUse {
			if _, ok := inUseStart[s.User]; !ok {
				inUseStart[s.User] = s.Start
			}
			continue
		}
		if !s.LoginAt.IsZero() {
			delete(inUseStart, s.User)
		}
	}
	for u, t0 := range inUseStart {
		r.LocksNotRecovered++
		r.problem("%s: [IN-USE] since %s and no login succeeded afterwards", u, t0.Format("15:04:05.000"))
	}
	if r.LockLimit > 0 && r.MaxInUse > r.LockLimit {
		r.LocksNotRecovered++
		r.problem("%s: [IN-USE] for %v at a stretch, more than lock_stale + margin = %v", r.MaxInUseUser, r.MaxInUse.Round(time.Second), r.LockLimit)
	}
}

// drainState returns the copies each user's final drain retrieved. The
// final state, the drain's listing and the store's files, is compared by
// copy (with a UIDL format other than "maildir" a UIDL is not the file's
// base name).
func (c *checker) drainState(drain []*Session) map[string]map[string]bool {
	r := c.r
	inDrain := map[string]map[string]bool{} // user -> copies
	for _, s := range drain {
		if s.LoginAt.IsZero() || s.Quit != "ok" {
			r.LocksNotRecovered++
			r.problem("final drain of %s failed: login %q, error %q, quit %q", s.User, s.LoginReply, s.Err, s.QuitReply)
			continue
		}
		inDrain[s.User] = map[string]bool{}
		for _, rt := range s.Retrs {
			if rt.Intact {
				c.presentToken[rt.Token] = true
				inDrain[s.User][copyKey(rt.Token, rt.Copy)] = true
			} else if rt.Token == "" {
				r.DrainStoreMismatch++
				r.problem("%s: the final drain lists UIDL %s but cannot retrieve it: %s", s.User, rt.UIDL, rt.Problem)
			}
		}
		r.FinalInDrain += len(s.UIDLs)
	}
	return inDrain
}

// storeState checks the store's files and returns them by user and copy.
func (c *checker) storeState(files []StoredFile) map[string]map[string]string {
	r := c.r
	inStore := map[string]map[string]string{} // user -> copy -> file
	for _, f := range files {
		r.FinalInStore++
		if !f.Intact {
			r.Corrupt++
			r.problem("store: %s/%s/%s: %s", f.User, f.Dir, f.Name, f.Problem)
			continue
		}
		cp := copyKey(f.Token, f.Copy)
		if inStore[f.User] == nil {
			inStore[f.User] = map[string]string{}
		}
		inStore[f.User][cp] = f.Dir + "/" + f.Name
		c.presentToken[f.Token] = true
		if c.maildirUIDLs {
			c.see(f.Token, f.Copy, uidlKey(f.User, f.UIDL))
		}
		if t, ok := c.committedCopy[cp]; ok {
			r.Resurrected++
			r.problem("store: %s/%s/%s (%s) is still there after a QUIT answered at %s deleted it", f.User, f.Dir, f.Name, f.Token, t.Format("15:04:05.000"))
		}
		if x, ok := c.expunged[cp]; ok {
			r.Resurrected++
			r.problem("store: %s/%s/%s (%s) is still there after IMAP expunged it at %s", f.User, f.Dir, f.Name, f.Token, x.At.Format("15:04:05.000"))
		}
		if m, ok := c.msgs[f.Token]; !ok {
			r.problem("store: %s/%s/%s: token %q was never submitted", f.User, f.Dir, f.Name, f.Token)
			r.Corrupt++
		} else if m.user != f.User {
			r.Corrupt++
			r.problem("store: %s/%s/%s: %s was sent to %s", f.User, f.Dir, f.Name, f.Token, m.user)
		}
	}
	return inStore
}

func (c *checker) compareDrainStore(inDrain map[string]map[string]bool, inStore map[string]map[string]string) {
	r := c.r
	for u, set := range inDrain {
		for cp := range set {
			if _, ok := inStore[u][cp]; !ok {
				r.DrainStoreMismatch++
				r.problem("%s: %s listed by the final drain but not in the store", u, cp)
			}
		}
		for cp, file := range inStore[u] {
			if !set[cp] {
				r.DrainStoreMismatch++
				r.problem("%s: %s (%s) in the store but not listed by the final drain", u, cp, file)
			}
		}
	}
}

// uidlsNameOneCopy: each stored copy keeps one UIDL across sessions and
// machines, and a UIDL names one copy.
func (c *checker) uidlsNameOneCopy() {
	r := c.r
	for cp, us := range c.copyUIDLs {
		if len(us) > 1 {
			r.UIDLChanged++
			r.problem("copy %s seen under %d UIDLs: %v", cp, len(us), keys(us))
		}
	}
	for u, cps := range c.uidlCopy {
		if len(cps) > 1 {
			r.UIDLChanged++
			r.problem("UIDL %s names %d copies: %v", u, len(cps), keys(cps))
		}
	}
	if !c.maildirUIDLs {
		return
	}
	// The acknowledged copy's UIDL is the base of the key nfsdrop answered.
	for _, t := range c.tokens {
		m := c.msgs[t]
		for _, k := range m.keys {
			base := store.BaseName(k)
			if other, ok := c.uidlToken[uidlKey(m.user, base)]; ok && other != t {
				r.UIDLChanged++
				r.problem("message %s: key %s, but UIDL %s was %s", t, k, base, other)
			}
		}
	}
}

// lostAndDoubled: a copy IMAP expunged is neither lost nor back.
func (c *checker) lostAndDoubled() {
	r := c.r
	for _, t := range c.tokens {
		m := c.msgs[t]
		if !m.acked {
			continue
		}
		if !c.presentToken[t] && !c.taken[t] && !c.expungedToken[t] {
			r.Lost++
			r.problem("message %s for %s (%s, key %v): acknowledged, not retrieved by a deleting client, not expunged over IMAP, not in the mailbox", t, m.user, m.qid, m.keys)
		}
		if n := len(c.tokenCopies[t]); n > 1 {
			if m.maybeTwice {
				r.RedeliveredExplained++
				why := "a delivery without a clear reply"
				if c.log != nil {
					why = fmt.Sprint(reasons(c.log.Attempts(m.qid)))
				}
				r.Notes = append(r.Notes, fmt.Sprintf("message %s (%s) stored %d times: resent after %s", t, m.qid, n, why))
			} else {
				r.Doubled++
				r.problem("message %s (%s) stored %d times (%v) but sent once", t, m.qid, n, keys(c.tokenCopies[t]))
			}
		}
	}
	for t := range c.tokenCopies {
		if _, ok := c.msgs[t]; !ok {
			r.Corrupt++
			r.problem("token %s retrieved but never submitted", t)
		}
	}
}

func reasons(as []Attempt) []string {
	var out []string
	for _, a := range as {
		if a.MaybeTwice {
			out = append(out, a.Reason)
		}
	}
	return out
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// hostOfKey is the host part of a Maildir key:
// <sec>.M<usec>P<pid>Q<n>R<rand>.<host>,S=...
func hostOfKey(key string) string {
	base := store.BaseName(key)
	i := strings.Index(base, "R")
	if i < 0 {
		return ""
	}
	rest := base[i:]
	if j := strings.IndexByte(rest, '.'); j >= 0 {
		return rest[j+1:]
	}
	return ""
}

// String formats the report.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "load: %d messages submitted (%d errors), %d queued or sent, %d acknowledged by nfsdrop (250 ... Saved), %d deferred at least once\n",
		r.Submitted, r.SubmitErrors, r.Accepted, r.Acknowledged, r.Deferred)
	fmt.Fprintf(&b, "      deliveries by host: %s\n", countsString(r.DeliveredBy))
	fmt.Fprintf(&b, "      %d POP3 sessions (%d logins, %d [IN-USE], %d broken), by host: %s\n", r.Sessions, r.Logins, r.InUseReplies, r.SessionErrors, countsString(r.SessionsBy))
	fmt.Fprintf(&b, "      %d retrievals (%d by deleting clients), %d UIDLs listed, %d commits (QUIT +OK) and %d without a clear answer\n",
		r.Retrievals, r.DeletedRetrievals, r.UIDLSightings, r.Commits, r.AmbiguousCommits)
	for _, k := range keys(boolKeys(r.DeferReasons)) {
		fmt.Fprintf(&b, "      Postfix %d× %s\n", r.DeferReasons[k], k)
	}
	for _, k := range keys(boolKeys(r.LoginErrors)) {
		fmt.Fprintf(&b, "      POP3 login %d× %s\n", r.LoginErrors[k], k)
	}
	if r.IMAPPasses > 0 {
		fmt.Fprintf(&b, "      %d IMAP passes (%d broken): %d flag changes (%d refused), %d expunges\n",
			r.IMAPPasses, r.IMAPErrors, r.IMAPFlagChanges, r.IMAPStoreErrors, r.IMAPExpunges)
	}
	fmt.Fprintf(&b, "final: %d messages listed by the drain, %d files in the store\n", r.FinalInDrain, r.FinalInStore)
	fmt.Fprintf(&b, "invariants: lost %d, resurrected %d, doubled %d, UIDL changes %d, corrupt %d, locks not recovered %d (longest [IN-USE] %v, limit %v), bounced %d, undelivered %d, drain/store mismatches %d, deleted twice %d, size mismatches %d, failed RETRs of stored messages %d\n",
		r.Lost, r.Resurrected, r.Doubled, r.UIDLChanged, r.Corrupt, r.LocksNotRecovered, r.MaxInUse.Round(100*time.Millisecond), r.LockLimit,
		r.Bounced, r.Undelivered, r.DrainStoreMismatch, r.DeletedTwice, r.SizeMismatches, r.RetrFailed)
	fmt.Fprintf(&b, "explained: %d messages stored twice because they were resent after a lost reply\n", r.RedeliveredExplained)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	if v := r.Violations(); v == 0 {
		b.WriteString("verdict: every invariant holds\n")
	} else {
		fmt.Fprintf(&b, "verdict: %d violations\n", v)
		for _, p := range r.Problems {
			fmt.Fprintf(&b, "  - %s\n", p)
		}
	}
	return b.String()
}

func countsString(m map[string]int) string {
	if len(m) == 0 {
		return "(none)"
	}
	var parts []string
	for _, k := range keys(boolKeys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func boolKeys(m map[string]int) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// longestInUse is the longest stretch of [IN-USE] answers of one user
// not covered by a session of that user that had logged in (sessions in
// the order they started).
func longestInUse(sessions []*Session) (longest time.Duration, user string) {
	inUseStart := map[string]time.Time{}
	lastInUse := map[string]time.Time{}
	heldUntil := map[string]time.Time{} // latest end of a logged-in session
	for _, s := range sessions {
		if s.InUse {
			if _, ok := inUseStart[s.User]; !ok {
				inUseStart[s.User] = s.Start
			}
			lastInUse[s.User] = s.End
			continue
		}
		if s.LoginAt.IsZero() {
			continue
		}
		if t0, ok := inUseStart[s.User]; ok {
			if h := heldUntil[s.User]; h.After(t0) {
				t0 = h
			}
			if d := lastInUse[s.User].Sub(t0); d > longest {
				longest, user = d, s.User
			}
			delete(inUseStart, s.User)
		}
		if s.End.After(heldUntil[s.User]) {
			heldUntil[s.User] = s.End
		}
	}
	return longest, user
}
