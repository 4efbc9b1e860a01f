// Package delivery joins the user database and the store: it turns a
// recipient address into a mailbox (lookup, quota with the size unknown),
// and stages and publishes messages. The LMTP server reaches it through
// lmtp.Backend; the deliver command calls it directly.
package delivery

import (
	"context"
	"io"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store"
)

// Agent delivers mail for users from one userdb into one store.
type Agent struct {
	Users userdb.DB
	Store *store.Store
	// Scan, when not nil, scans each message once as it is staged.
	Scan *ScanPolicy
}

// Target is a resolved recipient.
type Target struct {
	User    *userdb.User
	Mailbox store.Mailbox
}

// MailboxOf maps a user record to the store's view of its Maildir.
func MailboxOf(u *userdb.User) store.Mailbox {
	return store.Mailbox{
		Path:  u.Mailbox,
		UID:   u.UID,
		GID:   u.GID,
		Quota: store.Quota{Bytes: u.Quota.Bytes, Messages: u.Quota.Messages},
	}
}

// Resolve looks address up and checks that the mailbox is not already
// full. Errors are *failure.Error values from userdb or the store.
func (a *Agent) Resolve(ctx context.Context, address string) (Target, error) {
	u, err := a.Users.Lookup(ctx, address)
	if err != nil {
		return Target{}, err
	}
	t := Target{User: u, Mailbox: MailboxOf(u)}
	if err := a.Store.CheckQuota(t.Mailbox, 0); err != nil {
		return Target{}, err
	}
	return t, nil
}

// LMTP returns the agent as the LMTP server's backend.
func (a *Agent) LMTP() lmtp.Backend { return lmtpBackend{a} }

type lmtpBackend struct{ a *Agent }

func (b lmtpBackend) Resolve(ctx context.Context, address string) (lmtp.Recipient, error) {
	t, err := b.a.Resolve(ctx, address)
	if err != nil {
		return lmtp.Recipient{}, err
	}
	return lmtp.Recipient{Address: t.User.Address, Handle: t}, nil
}

func (b lmtpBackend) Stage(ctx context.Context, rcpts []lmtp.Recipient, trace string, msg io.Reader) (lmtp.Staged, error) {
	mbs := make([]store.Mailbox, len(rcpts))
	for i, r := range rcpts {
		mbs[i] = r.Handle.(Target).Mailbox
	}
	m, err := b.a.StageMessage(ctx, mbs, trace, msg)
	if err != nil {
		return nil, err
	}
	return staged{m}, nil
}

type staged struct{ m *Message }

func (s staged) Deliver(_ context.Context, r lmtp.Recipient, prefix []byte) (string, error) {
	d, err := s.m.Deliver(r.Handle.(Target).Mailbox, prefix)
	return d.Key, err
}

func (s staged) Discard() { s.m.Discard() }
