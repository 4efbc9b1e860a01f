// Package backend is where the protocols meet the user database, the virus
// scanner and the store: it implements lmtp.Backend (a delivery
// Transaction) and pop3.Backend (Login), and the deliver command drives
// the same Transaction. So the mail loop check, the trace headers, the
// scan, the write once and the publish per recipient exist once, and a
// reload swaps the user database, store and scanner for LMTP and POP3
// with one Swap.
//
// The protocol packages know nothing of this package; it knows them only
// through the interfaces they define.
package backend

import (
	"bufio"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/envelope"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
)

// Sources is what a transaction or a login uses; the daemon swaps it on
// SIGHUP and then closes the user database it replaced. So each step of a
// transaction (a recipient's lookup, the delivery) takes the Sources
// current at that step; a POP3 session keeps the store it logged in with.
type Sources struct {
	Users userdb.DB
	// Volumes are the volumes mailboxes live on, each with its store (one,
	// "default", when none is configured).
	Volumes *volume.Set
	// Scan, when not nil, scans each message once as it is written.
	Scan *ScanPolicy
	// Session configures POP3 sessions.
	Session store.SessionOptions
	// Hostname names this machine in the Received header.
	Hostname string
}

// Options configures a Backend.
type Options struct {
	Logger *slog.Logger
	// Now is the clock of the Received header and of the commit deadline
	// (nil: time.Now).
	Now func() time.Time
	// CommitDeadline bounds the time from the end of a message's data to
	// its publication for a recipient (lmtp.commit_deadline); 0 is no
	// bound. A client that stopped waiting for the answer sends the
	// message again, so a later publication would deliver it twice: such
	// a recipient gets a temporary failure instead (store.Staged.SetDeadline).
	CommitDeadline time.Duration
}

// Backend implements lmtp.Backend and pop3.Backend over the current
// Sources.
type Backend struct {
	cur            atomic.Pointer[Sources]
	log            *slog.Logger
	now            func() time.Time
	commitDeadline time.Duration
	// headerReaders are *bufio.Reader of envelope.HeaderBufferSize for
	// reading messages' header sections, reused between deliveries: a
	// fresh 64 KB buffer per message was a tenth of lmtpd's own CPU time
	// (allocating and clearing it, and the garbage collection it caused).
	headerReaders sync.Pool
}

var (
	_ lmtp.Backend = (*Backend)(nil)
	_ pop3.Backend = (*Backend)(nil)
)

// New makes a Backend over src.
func New(src *Sources, opts Options) *Backend {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := &Backend{log: opts.Logger, now: opts.Now, commitDeadline: opts.CommitDeadline}
	b.headerReaders.New = func() any { return bufio.NewReaderSize(nil, envelope.HeaderBufferSize) }
	b.cur.Store(src)
	return b
}

// headerReader is a pooled reader over r; give it back with
// putHeaderReader once nothing reads from it any more.
func (b *Backend) headerReader(r io.Reader) *bufio.Reader {
	br := b.headerReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func (b *Backend) putHeaderReader(br *bufio.Reader) {
	br.Reset(nil) // keep no reference to the message's reader
	b.headerReaders.Put(br)
}

// Swap replaces the sources (configuration reload).
func (b *Backend) Swap(src *Sources) { b.cur.Store(src) }

// MailboxOf maps a user record to the store's view of its Maildir.
func MailboxOf(u *userdb.User) store.Mailbox {
	return store.Mailbox{
		Path:  u.Mailbox,
		UID:   u.UID,
		GID:   u.GID,
		Quota: store.Quota{Bytes: u.Quota.Bytes, Messages: u.Quota.Messages},
	}
}
