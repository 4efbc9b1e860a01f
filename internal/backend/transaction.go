package backend

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/envelope"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// transaction is one delivery (lmtp.Transaction), in the spirit of maddy's
// Delivery: recipients are looked up and added one by one; Deliver reads
// the message once, refuses the recipients it already passed through,
// adds the trace headers, scans, writes the message once for the others
// and publishes it to each, answering each on its own.
type transaction struct {
	b     *Backend
	env   lmtp.Envelope
	rcpts []recipient
}

// recipient is a recipient that was looked up and passed the quota check.
type recipient struct {
	addr      string // as the client gave it
	canonical string // the user's address: detail removed, domain folded
	vol       *volume.Volume
	mailbox   store.Mailbox
}

// Begin starts a transaction.
func (b *Backend) Begin(env lmtp.Envelope) lmtp.Transaction {
	return &transaction{b: b, env: env}
}

// AddRecipient looks address up and checks that the mailbox is not
// already full (the size is not known yet). Errors are *failure.Error
// values from the user database or the store.
func (t *transaction) AddRecipient(ctx context.Context, address string, admit func(canonical string) error) error {
	src := t.b.cur.Load()
	u, err := src.Users.Lookup(ctx, address)
	if err != nil {
		return err
	}
	// Which volume: a down one answers 451 here, at RCPT, for its users
	// only (the volume is in the log, never a path in the reply).
	vol, mb, err := src.Volumes.Locate(ctx, u)
	if err != nil {
		t.b.log.Warn("recipient's volume unavailable", "rcpt", address, "user", u.Name, "volume", volumeOf(vol, u), "err", err.Error())
		return err
	}
	if err := vol.Store.CheckQuota(mb, 0); err != nil {
		return err
	}
	if admit != nil {
		if err := admit(u.Address); err != nil {
			return err
		}
	}
	t.rcpts = append(t.rcpts, recipient{addr: address, canonical: u.Address, vol: vol, mailbox: mb})
	return nil
}

// Abort forgets the recipients: nothing was written before Deliver.
func (t *transaction) Abort() { t.rcpts = nil }

// Deliver reads the header, refuses the recipients named in a
// Delivered-To line (a mail loop), and writes the message once for the
// others (see store.Store.StageFor and stage) before publishing it to
// each.
func (t *transaction) Deliver(ctx context.Context, msg io.Reader, status func(int, lmtp.Status)) int {
	rcpts := t.rcpts
	t.rcpts = nil
	src := t.b.cur.Load()
	in := &firstError{r: msg, now: t.b.now}
	br := t.b.headerReader(in)
	// Deliver returns only after the store has read body to its end (or
	// failed): nothing reads through br after this.
	defer t.b.putHeaderReader(br)
	hdr, body, err := envelope.ReadHeaderFrom(br)
	answer := func(i int, s lmtp.Status) {
		s.QueueID = hdr.QueueID
		status(i, s)
	}
	if err != nil {
		err = readFailure(err, "message not read")
		for i := range rcpts {
			answer(i, lmtp.Status{Err: err})
		}
		return 0
	}
	var live []int
	for i, r := range rcpts {
		if hdr.Looped(r.addr, r.canonical) {
			answer(i, lmtp.Status{Err: failure.New(failure.Loop, "loop check", "mail loop", nil)})
			continue
		}
		live = append(live, i)
	}
	if len(live) == 0 {
		return 0
	}
	trace := t.trace(src.Hostname, rcpts, live)
	if len(src.Volumes.Volumes()) > 1 {
		t.deliverSpread(ctx, src, rcpts, live, trace, body, in, answer)
		return len(live)
	}
	mailboxes := make([]store.Mailbox, len(live))
	for j, i := range live {
		mailboxes[j] = rcpts[i].mailbox
	}
	m, err := stage(ctx, rcpts[live[0]].vol.Store, src.Scan, mailboxes, trace, body)
	if err == nil && in.err != nil {
		// The message was not read completely, yet the write succeeded:
		// never publish a partial message, whatever the store did.
		m.Discard()
		err = readFailure(in.err, "message not received completely")
	}
	if err != nil {
		for _, i := range live {
			answer(i, lmtp.Status{Err: err})
		}
		return len(live)
	}
	defer m.Discard()
	if d := t.b.commitDeadline; d > 0 {
		m.SetDeadline(in.endedAt().Add(d))
	}
	eachDeliveredTo := t.env.DeliveredToEach && len(live) > 1
	for _, i := range live {
		var prefix []byte
		if eachDeliveredTo {
			prefix = []byte(envelope.DeliveredTo(rcpts[i].addr))
		}
		d, err := m.Deliver(rcpts[i].mailbox, prefix)
		answer(i, lmtp.Status{Err: err, Key: d.Key, Size: d.Size, Quarantined: m.Quarantined(), Recipients: len(live)})
	}
	return len(live)
}

// trace is the header lines added above the message: Return-Path, and for
// a message written for one recipient its Delivered-To; then Received,
// naming that one recipient.
func (t *transaction) trace(hostname string, rcpts []recipient, live []int) string {
	trace := envelope.ReturnPath(t.env.From)
	only := ""
	if len(live) == 1 {
		only = rcpts[live[0]].addr
		trace += envelope.DeliveredTo(only)
	}
	return trace + envelope.Received(t.env.Helo, t.env.Remote, hostname, t.env.Protocol, t.env.ID, only, t.b.now())
}

// readFailure keeps the kind of a *failure.Error from the reader (a size
// limit: refused, not deferred); anything else is temporary.
func readFailure(err error, reason string) error {
	var fe *failure.Error
	if errors.As(err, &fe) {
		return err
	}
	return failure.Temp("read message", reason, err)
}

// firstError remembers the first error other than io.EOF its reader
// returned: whether the message was read completely; and when it read
// the end of the message, where the client starts waiting for the
// answers (Postfix's lmtp_data_done_timeout counts from there).
type firstError struct {
	r   io.Reader
	err error
	now func() time.Time
	eof time.Time
}

func (f *firstError) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err != nil && err != io.EOF && f.err == nil {
		f.err = err
	}
	if err == io.EOF && f.eof.IsZero() {
		f.eof = f.now()
	}
	return n, err
}

// endedAt is when the end of the message was read; now when it was not
// seen (the writer stopped reading at the end by itself).
func (f *firstError) endedAt() time.Time {
	if f.eof.IsZero() {
		return f.now()
	}
	return f.eof
}
