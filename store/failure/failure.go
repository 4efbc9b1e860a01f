// Package failure carries the kind of a failure across package boundaries.
//
// The store, the user database and the virus scanner return *Error values;
// each protocol (LMTP, POP3, the deliver command) maps the Kind to its own
// reply exactly once, with errors.As, and UserFault says in one place which
// kinds are the user's doing. Anything that is not a *Error is treated as
// Temporary: an error we did not foresee must make Postfix retry, never
// bounce the message.
//
// Why one public leaf package, and why here. lmtp, pop3 and store are
// public: code outside this module must be able to build the errors their
// interfaces ask for (a Backend refusing a recipient, a Mailbox whose
// message is gone), as go-smtp's callers build *smtp.SMTPError. Each
// public package could export an error type of its own, but the kinds are
// produced by three packages (store, userdb, scan) and read by three
// boundaries (LMTP replies, POP3 replies, deliver's exit status): one type
// per package would add a conversion per protocol in internal/backend and
// a second table of kinds to keep in step, where one shared leaf needs
// none. The repository's top level is fixed, so the leaf lives under the
// lowest public package, store, whose errno table produces most kinds. It
// imports nothing of nfsdrop: lmtp and pop3 import it and still know
// nothing of the store.
package failure

import (
	"errors"
	"fmt"
)

// Kind says what the peer should be told about a failure.
type Kind uint8

const (
	// Temporary: retry later (LMTP 451, EX_TEMPFAIL, -ERR [SYS/TEMP]).
	Temporary Kind = iota
	// Permanent: retrying will not help (LMTP 550/554, EX_UNAVAILABLE).
	Permanent
	// NotFound: no such user (LMTP 550 5.1.1, EX_NOUSER).
	NotFound
	// Disabled: the account exists but must not receive mail (550 5.2.1).
	Disabled
	// OverQuota: the mailbox is full. Whether that bounces or defers is
	// decided by configuration and recorded in Error.Defer.
	OverQuota
	// TooLarge: the message exceeds the configured size limit (552 5.3.4).
	TooLarge
	// Virus: the scanner found malware (554 5.7.1).
	Virus
	// Loop: the message already passed through this recipient (554 5.4.6).
	Loop
	// BadInput: the peer sent something malformed (501/554 style refusal).
	BadInput
	// InUse: the mailbox is held by another session (POP3 [IN-USE]).
	InUse
)

var kindNames = [...]string{"temporary", "permanent", "not-found", "disabled", "over-quota", "too-large", "virus", "loop", "bad-input", "in-use"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Error is a failure with a kind, the operation that failed, a short reason
// that is safe to show to the peer, and the underlying cause (which may be a
// syscall.Errno, so errors.Is(err, syscall.ESTALE) works).
type Error struct {
	Kind Kind
	// Defer is set on OverQuota when the administrator chose to defer
	// (452 4.2.2 / EX_TEMPFAIL) instead of bouncing (552 5.2.2 / EX_NOPERM).
	Defer bool
	// Op names what was being done ("link", "ldap search", "clamd scan").
	Op string
	// Reason is short text for the peer: no paths, no secrets.
	Reason string
	// Detail is extra text for the peer, e.g. a virus signature name.
	Detail string
	// DSN overrides the enhanced status code a protocol would choose for
	// the kind (e.g. "4.7.1" for a temporary failure of the virus
	// scanner, where the default for Temporary is "4.3.0").
	DSN string
	// Err is the cause, for the log and for errors.Is.
	Err error
}

func (e *Error) Error() string {
	msg := e.Op
	if e.Reason != "" {
		if msg != "" {
			msg += ": "
		}
		msg += e.Reason
	}
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	if e.Err != nil {
		if msg != "" {
			msg += ": "
		}
		msg += e.Err.Error()
	}
	if msg == "" {
		msg = e.Kind.String() + " failure"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the peer should retry. An unknown error is
// temporary.
func (e *Error) Temporary() bool {
	switch e.Kind {
	case Temporary:
		return true
	case OverQuota:
		return e.Defer
	}
	return false
}

// New makes an *Error.
func New(kind Kind, op, reason string, cause error) *Error {
	return &Error{Kind: kind, Op: op, Reason: reason, Err: cause}
}

// Temp wraps cause as a temporary failure of op.
func Temp(op, reason string, cause error) *Error { return New(Temporary, op, reason, cause) }

// Perm wraps cause as a permanent failure of op.
func Perm(op, reason string, cause error) *Error { return New(Permanent, op, reason, cause) }

// As returns the *Error in err's chain, or a Temporary one wrapping err when
// there is none. It returns nil for a nil error.
func As(err error) *Error {
	if err == nil {
		return nil
	}
	var fe *Error
	if errors.As(err, &fe) {
		return fe
	}
	return &Error{Kind: Temporary, Reason: "internal error", Err: err}
}

// KindOf is As(err).Kind; an unknown error is Temporary. So is nil: a
// caller classifying a failure that carries no error has a bug, and the
// safe answer is the one that keeps the message with the sender (4xx,
// EX_TEMPFAIL), not a panic that takes the daemon's other sessions down.
func KindOf(err error) Kind {
	if err == nil {
		return Temporary
	}
	return As(err).Kind
}

// UserFault reports whether err is the user's (or the client's) doing,
// not the system's: no such user or wrong password (NotFound), a disabled
// account, malformed input. The POP3 login answers all three alike
// ([AUTH], so that a guesser learns nothing), deliver exits EX_NOUSER for
// them, and the metrics do not count them as user database errors.
func UserFault(err error) bool {
	if err == nil {
		return false
	}
	switch KindOf(err) {
	case NotFound, Disabled, BadInput:
		return true
	}
	return false
}
