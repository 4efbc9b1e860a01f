package store

import (
	"errors"
	"syscall"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// classify turns a filesystem error into a *failure.Error, keeping the
// errno in the chain so errors.Is(err, syscall.ESTALE) still works.
//
// This is the store's one errno table, in the spirit of Postfix's mbox_dsn
// but NFS-aware. The rule for anything not listed is "temporary": Postfix
// keeps the message and retries, and an administrator sees the log line.
// Bouncing on an errno we did not foresee would lose mail on a filer hiccup.
func (s *Store) classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var fe *failure.Error
	if errors.As(err, &fe) {
		if fe.Op != op && errors.Is(err, syscall.ETIMEDOUT) {
			// A refusal from the volume's gate: keep its answer, and name
			// the store operation it stopped, so that the log tells
			// whether the message had already been published.
			return &failure.Error{Kind: fe.Kind, Defer: fe.Defer, Op: op, Reason: fe.Reason, Detail: fe.Detail, DSN: fe.DSN, Err: err}
		}
		return err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return failure.Temp(op, "mail store error", err)
	}
	if s.obs != nil {
		s.obs.FSError(errno)
	}
	switch errno {
	case syscall.EDQUOT, syscall.EFBIG:
		// The filesystem's own quota (or file size limit): the same
		// answer as our Maildir++ quota, bounce or defer as configured.
		return &failure.Error{Kind: failure.OverQuota, Defer: s.quotaDefer, Op: op, Reason: "mailbox full", Err: err}
	case syscall.ENOSPC:
		return failure.Temp(op, "mail store full", err)
	case syscall.ESTALE, syscall.EIO, syscall.ETIMEDOUT, syscall.EAGAIN, syscall.EINTR,
		syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE, syscall.EBUSY, syscall.EROFS:
		return failure.Temp(op, "mail store unavailable", err)
	case syscall.EACCES, syscall.EPERM:
		// A permission problem is an administrator's mistake that can be
		// fixed while Postfix holds the mail.
		return failure.Temp(op, "mail store permission denied", err)
	case syscall.ENOTDIR, syscall.ELOOP, syscall.ENAMETOOLONG:
		// The user's mailbox path is unusable as configured; retrying will
		// not help until the user record changes.
		return failure.Perm(op, "mailbox path unusable", err)
	}
	return failure.Temp(op, "mail store error", err)
}

// isErrno reports whether err carries errno e.
func isErrno(err error, e syscall.Errno) bool { return errors.Is(err, e) }
