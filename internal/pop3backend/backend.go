// Package pop3backend joins the POP3 protocol to the user database and the
// store: a login authenticates against the userdb, then opens the user's
// Maildir as a locked, listed store.Session.
package pop3backend

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/nfsdrop/nfsdrop/internal/delivery"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
)

// Sources is what a login needs; the daemon swaps it on SIGHUP.
type Sources struct {
	Users   userdb.DB
	Store   *store.Store
	Session store.SessionOptions
}

// Backend implements pop3.Backend.
type Backend struct {
	cur atomic.Pointer[Sources]
	log *slog.Logger
}

// New makes a Backend over src.
func New(src *Sources, log *slog.Logger) *Backend {
	b := &Backend{log: log}
	b.cur.Store(src)
	return b
}

// Swap replaces the sources (configuration reload); sessions already open
// keep the ones they started with.
func (b *Backend) Swap(src *Sources) { b.cur.Store(src) }

// Login authenticates and opens the mailbox.
func (b *Backend) Login(ctx context.Context, c pop3.Client, username, password string) (pop3.Mailbox, error) {
	src := b.cur.Load()
	u, err := src.Users.Authenticate(ctx, username, password)
	if err != nil {
		return nil, err
	}
	opts := src.Session
	opts.Owner = u.Name + " " + c.Remote.String() + " " + c.Session
	ss, err := src.Store.OpenSession(delivery.MailboxOf(u), opts)
	if err != nil {
		return nil, err
	}
	return newMailbox(ss), nil
}

// mailbox is a store.Session as a pop3.Mailbox. It reads the session's
// listing by index: the store hands out its cached listing without a copy,
// and so does the login.
type mailbox struct{ ss *store.Session }

func newMailbox(ss *store.Session) mailbox { return mailbox{ss: ss} }

func (m mailbox) Len() int { return len(m.ss.Entries()) }
func (m mailbox) Message(i int) pop3.Message {
	e := &m.ss.Entries()[i]
	return pop3.Message{Size: e.Size, UID: e.UIDL}
}
func (m mailbox) Open(i int) (io.ReadCloser, error)     { return m.ss.Open(i) }
func (m mailbox) Commit(deleted, retrieved []int) error { return m.ss.Commit(deleted, retrieved) }
func (m mailbox) Close() error                          { return m.ss.Close() }
