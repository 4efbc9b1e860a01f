package backend

import (
	"context"
	"errors"
	"io"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/store/failure"

	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
)

// Login authenticates against the user database and opens the user's
// Maildir as a locked, listed store.Session (pop3.Backend).
func (b *Backend) Login(ctx context.Context, c pop3.Client, username, password string) (pop3.Mailbox, error) {
	src := b.cur.Load()
	u, err := src.Users.Authenticate(ctx, username, password)
	if err != nil {
		return nil, err
	}
	opts := src.Session
	opts.Owner = u.Name + " " + c.Remote.String() + " " + c.Session
	vol, mb, err := src.Volumes.Locate(ctx, u)
	if err != nil {
		b.log.Warn("pop3 login: mailbox volume unavailable", "user", u.Name, "volume", volumeOf(vol, u), "err", err.Error())
		return nil, err
	}
	ss, err := vol.Store.OpenSession(mb, opts)
	var moved *store.MovedError
	if errors.As(err, &moved) {
		// The Maildir moved to another volume and the user database
		// does not say so yet: follow the tombstone, once.
		if vol, mb, err = src.Volumes.Relocate(vol, mb, moved.Volume); err != nil {
			return nil, err
		}
		ss, err = vol.Store.OpenSession(mb, opts)
		if errors.As(err, &moved) {
			return nil, failure.Temp("open session", "mailbox being moved", err)
		}
	}
	if err != nil {
		return nil, err
	}
	return mailbox{ss: ss}, nil
}

// volumeOf names the volume of a user for the log: the one located, else
// the one the user database named.
func volumeOf(v *volume.Volume, u *userdb.User) string {
	if v != nil {
		return v.Name
	}
	return u.Volume
}

// mailbox is a store.Session as a pop3.Mailbox. It reads the session's
// listing by index: the store hands out its cached listing without a copy,
// and so does the login.
type mailbox struct{ ss *store.Session }

func (m mailbox) Len() int { return len(m.ss.Entries()) }
func (m mailbox) Message(i int) pop3.Message {
	e := &m.ss.Entries()[i]
	return pop3.Message{Size: e.Size, UID: e.UIDL}
}
func (m mailbox) Open(i int) (io.ReadCloser, error)     { return m.ss.Open(i) }
func (m mailbox) Commit(deleted, retrieved []int) error { return m.ss.Commit(deleted, retrieved) }
func (m mailbox) Close() error                          { return m.ss.Close() }
