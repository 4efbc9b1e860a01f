package loadcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/dovecot"
)

// IMAPPass is one IMAP client connection as it saw it: LOGIN, SELECT
// INBOX (Dovecot moves new/ to cur/ and lists every message in
// dovecot-uidlist), flag changes on a few messages (Dovecot renames
// their files in cur/), at times one UID EXPUNGE, LOGOUT.
type IMAPPass struct {
	ID          int
	User        string
	Start, End  time.Time
	UIDValidity uint32
	Messages    int
	// FlagChanges counts STOREs answered OK, StoreErrors those answered
	// NO (a message a POP3 session deleted meanwhile).
	FlagChanges, StoreErrors int
	Expunged                 []Expunge
	Err                      string
}

// Expunge is a message IMAP expunged: from At (the tagged OK) on, it
// must not be listed by a POP3 session whose PASS was sent later, nor be
// in the store at the end; it is not lost.
type Expunge struct {
	UID uint32
	// DovecotUIDL is the UIDL Dovecot's POP3 would give it (%08X%08X of
	// UID and UIDVALIDITY), one of those nfsdrop may list it under.
	DovecotUIDL string
	Token, Copy string
	At          time.Time
}

func (r *Recorder) newIMAPPass(user string) *IMAPPass {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	p := &IMAPPass{ID: r.nextID, User: user, Start: time.Now()}
	r.imap = append(r.imap, p)
	return p
}

// IMAPPasses returns the IMAP passes so far.
func (r *Recorder) IMAPPasses() []*IMAPPass {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*IMAPPass(nil), r.imap...)
}

// imapFlags are the flags the IMAP client sets and clears: both rename
// the file in cur/ (":2,S", ":2,F", ":2,FS").
var imapFlags = []string{`\Seen`, `\Flagged`}

func (ld *Load) imapClient(ctx context.Context, rnd *rand.Rand) {
	for pass := 0; ctx.Err() == nil; pass++ {
		user := ld.cfg.Users[rnd.Intn(len(ld.cfg.Users))]
		expunge := pass%ld.cfg.ExpungeOneIn == ld.cfg.ExpungeOneIn-1
		p := ld.Rec.newIMAPPass(user)
		err := ld.imapPass(ctx, p, expunge, rnd)
		ld.Rec.set(func() {
			p.End = time.Now()
			if err != nil {
				p.Err = err.Error()
			}
		})
		select {
		case <-ctx.Done():
		case <-time.After(ld.cfg.Pause):
		}
	}
}

// imapPass runs one IMAP connection. Like a POP3 session, a pass in
// progress runs to its end when the load stops, so that every expunge is
// known.
func (ld *Load) imapPass(ctx context.Context, p *IMAPPass, expunge bool, rnd *rand.Rand) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := ld.cfg.Dial(dctx, "tcp", ld.cfg.IMAPAddr)
	cancel()
	if err != nil {
		return err
	}
	cl, err := dovecot.NewClient(conn, ld.cfg.Timeout)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.Login(p.User, ld.cfg.Password); err != nil {
		return err
	}
	mb, err := cl.Select("INBOX")
	if err != nil {
		return err
	}
	msgs, err := cl.Fetch(TokenHeader, "Received")
	if err != nil {
		return err
	}
	ld.Rec.set(func() { p.UIDValidity, p.Messages = mb.UIDValidity, len(msgs) })
	if len(msgs) == 0 {
		return cl.Logout()
	}
	for _, i := range rnd.Perm(len(msgs))[:min(len(msgs), ld.cfg.IMAPFlagsPerPass)] {
		flag := imapFlags[rnd.Intn(len(imapFlags))]
		op := "+FLAGS"
		if hasFlag(msgs[i].Flags, flag) {
			op = "-FLAGS"
		}
		err := cl.Store(msgs[i].UID, op, flag)
		ld.Rec.set(func() {
			if err == nil {
				p.FlagChanges++
			} else {
				p.StoreErrors++
			}
		})
		if err != nil && !isNo(err) {
			return err
		}
	}
	if expunge {
		m := msgs[rnd.Intn(len(msgs))]
		h := ParseHeader([]byte(m.Header))
		err := cl.Expunge(m.UID)
		switch {
		case err == nil:
			x := Expunge{UID: m.UID, DovecotUIDL: dovecot.DovecotUIDL(m.UID, mb.UIDValidity), Token: h.Token, Copy: h.Copy, At: time.Now()}
			ld.Rec.set(func() { p.Expunged = append(p.Expunged, x) })
		case errors.Is(err, dovecot.ErrNotExpunged) || isNo(err):
			// Gone already: a POP3 session deleted it.
		default:
			return fmt.Errorf("expunge: %w", err)
		}
	}
	if err := cl.Noop(); err != nil {
		return err
	}
	return cl.Logout()
}

func hasFlag(flags []string, f string) bool {
	for _, g := range flags {
		if strings.EqualFold(g, f) {
			return true
		}
	}
	return false
}

// isNo reports whether err is a tagged NO (the command was refused, the
// connection is fine).
func isNo(err error) bool {
	var se *dovecot.StatusError
	return errors.As(err, &se) && strings.HasPrefix(se.Reply, "NO")
}
