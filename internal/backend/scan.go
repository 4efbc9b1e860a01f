package backend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/envelope"
	"github.com/nfsdrop/nfsdrop/internal/scan"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Scan actions ([scan] action).
const (
	ActionReject     = "reject"
	ActionQuarantine = "quarantine"
	ActionTag        = "tag"
)

// ScanPolicy is what to do with the scanner's verdict.
type ScanPolicy struct {
	Scanner *scan.Scanner
	// Action is ActionReject, ActionQuarantine or ActionTag.
	Action string
	// Quarantine is the Maildir infected mail goes to with ActionQuarantine.
	Quarantine store.Mailbox
	// FailOpen delivers unscanned (tagged, logged) when clamd is down.
	FailOpen bool
	Log      *slog.Logger
}

func (p *ScanPolicy) logger() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// message is a message staged once, scanned once while it was written,
// and ready to be published per recipient according to the verdict.
type message struct {
	st     *store.Staged
	policy *ScanPolicy
	// refuse is returned for every recipient (a virus under "reject", or
	// the scanner unavailable without fail_open).
	refuse error
	// header is prepended to every recipient's copy ("tag", skipped or
	// fail-open scans); nil when copies are plain hard links.
	header []byte
	// quarantine: infected mail goes once to the quarantine Maildir and
	// every recipient is answered with that delivery.
	quarantine bool
	qOnce      sync.Once
	qDelivery  store.Delivery
	qErr       error
	// tagged is the message with header, staged once on first use and
	// hard-linked to every recipient that needs no header of its own.
	tagOnce   sync.Once
	tagged    *store.Staged
	taggedErr error
}

// stage writes trace+msg once for recipients into st (see
// store.Store.StageFor: in the only recipient's tmp/, or in the spool, so
// that no recipient's Maildir answers for the others), scanning msg on the
// way when a scanner is configured. Nothing is published yet.
func stage(ctx context.Context, st *store.Store, p *ScanPolicy, recipients []store.Mailbox, trace string, msg io.Reader) (*message, error) {
	if p == nil || p.Scanner == nil {
		staged, err := st.StageFor(recipients, io.MultiReader(strings.NewReader(trace), msg))
		if err != nil {
			return nil, err
		}
		return &message{st: staged}, nil
	}
	tee, verdict := p.tee(ctx, msg)
	staged, err := st.StageFor(recipients, io.MultiReader(strings.NewReader(trace), tee))
	res, scanErr := verdict()
	if err != nil {
		return nil, err
	}
	m := &message{st: staged, policy: p}
	m.judge(res, scanErr)
	return m, nil
}

// tee starts scanning msg as it is read.
func (p *ScanPolicy) tee(ctx context.Context, msg io.Reader) (io.Reader, func() (scan.Result, error)) {
	// X-Virus-Status is ours to write: one that came with the message
	// (a sender's forged "Clean") must not reach the mailbox, whatever the
	// action, since readers and filters cannot tell it from ours.
	msg = envelope.StripFields(msg, scan.StatusHeaderName)
	// Only the message as received goes to clamd, not our trace headers,
	// so clamd's StreamMaxLength compares with lmtp.max_message_size.
	return p.Scanner.Tee(ctx, msg)
}

// judge sets what the scanner's verdict makes of m: refused, quarantined
// or tagged. A refused message's staged copy is dropped at once.
func (m *message) judge(res scan.Result, scanErr error) {
	p := m.policy
	log := p.logger()
	switch {
	case scanErr != nil && errors.Is(scanErr, scan.ErrUnavailable) && p.FailOpen:
		log.Warn("virus scanner unavailable; delivering unscanned (scan.fail_open)", "err", scanErr.Error())
		m.header = []byte(scan.StatusHeader(res, scanErr))
	case scanErr != nil:
		fe := failure.As(scanErr)
		if fe.Kind == failure.Temporary {
			e := *fe
			e.DSN = "4.7.1"
			m.refuse = &e
		} else {
			m.refuse = scanErr
		}
	case res.Infected():
		switch p.Action {
		case ActionQuarantine:
			m.quarantine = true
			m.header = []byte(scan.StatusHeader(res, nil))
		case ActionTag:
			m.header = []byte(scan.StatusHeader(res, nil))
		default:
			m.refuse = res.Err()
		}
	case res.Skipped || p.Action == ActionTag:
		m.header = []byte(scan.StatusHeader(res, nil))
	}
	if m.refuse != nil && m.st != nil {
		// Keep the staged copy for quarantine; drop it for a refusal.
		m.st.Discard()
	}
}

// Deliver publishes the message for mb (with prefix, per-recipient header
// lines, when not nil) according to the scan verdict.
func (m *message) Deliver(mb store.Mailbox, prefix []byte) (store.Delivery, error) {
	if m.refuse != nil {
		return store.Delivery{}, m.refuse
	}
	if m.quarantine {
		m.qOnce.Do(func() {
			m.qDelivery, m.qErr = m.st.DeliverWithPrefix(m.policy.Quarantine, m.header)
		})
		return m.qDelivery, m.qErr
	}
	if m.header != nil && prefix != nil {
		return m.st.DeliverWithPrefix(mb, append(append([]byte{}, m.header...), prefix...))
	}
	if m.header != nil {
		m.tagOnce.Do(func() {
			m.tagged, m.taggedErr = m.st.Restage(m.header)
			if m.taggedErr != nil {
				m.policy.logger().Warn("could not stage the message with its scan header once; writing a copy per recipient", "err", m.taggedErr.Error())
			}
		})
		if m.taggedErr != nil {
			// Not this recipient's trouble: each recipient gets its own
			// copy in its own tmp/, and its own answer.
			return m.st.DeliverWithPrefix(mb, m.header)
		}
		return m.tagged.Deliver(mb)
	}
	if prefix != nil {
		return m.st.DeliverWithPrefix(mb, prefix)
	}
	return m.st.Deliver(mb)
}

// SetDeadline sets the commit deadline of the staged copy and of the
// copy with the scan header, if one is made (store.Staged.SetDeadline).
func (m *message) SetDeadline(t time.Time) {
	if m.refuse == nil {
		m.st.SetDeadline(t)
	}
}

// Quarantined reports whether the message went to quarantine.
func (m *message) Quarantined() bool { return m.quarantine }

// Discard releases the staged copy.
func (m *message) Discard() {
	if m.refuse == nil && m.st != nil {
		m.st.Discard()
	}
	if m.tagged != nil {
		m.tagged.Discard()
	}
}
