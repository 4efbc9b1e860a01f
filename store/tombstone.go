package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// A Maildir moved to another volume (Move, move.go) leaves a tombstone at
// its old place: the POP3 session-lock symlink (LockName) holding, for
// good, a target that is no session's token but "moving:VOLUME" while the
// switch runs and "moved:VOLUME" once the new copy is live, and no tmp/,
// new/ or cur/. Every machine follows it with no extra NFS call on the
// fast path: a delivery's or a session's open of tmp/ (or new/, cur/)
// fails with ENOENT, and only then is the lock read (before the repair of
// an incomplete Maildir, which would otherwise bring the old mailbox back
// to life); a login that meets the lock reads its target anyway. A
// tombstone is never judged stale, so it is never taken over.
const (
	tombstoneMoving = "moving:"
	tombstoneMoved  = "moved:"
)

// volumeName is what a tombstone may name (the volume names of the
// configuration: also a metric label).
var volumeName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// errBeingMoved is the cause of the temporary failure a delivery or login
// gets while a move switches the Maildir over.
var errBeingMoved = errors.New("mailbox is being moved to another volume")

// tombstone parses a lock token: state is tombstoneMoving or
// tombstoneMoved and volume the volume named, ok false for a session's
// token.
func tombstone(token string) (state, volume string, ok bool) {
	for _, st := range [...]string{tombstoneMoving, tombstoneMoved} {
		if v, found := strings.CutPrefix(token, st); found && volumeName.MatchString(v) {
			return st, v, true
		}
	}
	return "", "", false
}

// tombstoneError is the answer to a delivery or login that met a
// tombstone: *MovedError (moved.go: the same path relative to that
// volume's root holds the Maildir now) inside a temporary failure for a
// finished move, so that a caller that does not follow it (errors.As)
// defers the mail or the login, a
// temporary "mailbox is being moved" during one. session makes the latter
// failure.InUse (POP3's [IN-USE]: try again shortly).
func tombstoneError(state, volume string, session bool) error {
	if state == tombstoneMoved {
		return &failure.Error{Kind: failure.Temporary, Op: "maildir", Reason: "mailbox moved to another volume",
			Err: &MovedError{Volume: volume}}
	}
	kind := failure.Temporary
	if session {
		kind = failure.InUse
	}
	return failure.New(kind, "maildir", "mailbox is being moved", fmt.Errorf("to volume %s: %w", volume, errBeingMoved))
}

// checkTombstone reads the session lock of the pinned Maildir dir (path
// names it through the pin) after one of its subdirectories was found
// missing: nil when it is no tombstone (no lock, or a session's), else
// the tombstone's answer. An error reading the lock is temporary: a
// Maildir that may be a tombstone must not be repaired.
func (s *Store) checkTombstone(lockPath string) error {
	lf, err := s.readLock(lockPath)
	if isErrno(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return s.classify("read session lock", err)
	}
	if state, vol, ok := tombstone(lf.token); ok {
		return tombstoneError(state, vol, false)
	}
	return nil
}

func isTombstone(token string) bool { _, _, ok := tombstone(token); return ok }

// sealedByMove reports whether the fsync of mb's new/ failed because a
// move sealed the Maildir (move.go) after our entry was made there: the
// directory is gone (ESTALE over NFS, ENOENT) and the lock is a
// tombstone. The seal removes new/ only once it is empty, having renamed
// every entry into its holding directory and fsynced that, so our message
// is in the move's hands (or, if new/ is in fact still there, will be):
// answering a temporary failure would have Postfix deliver it twice.
func (s *Store) sealedByMove(mb Mailbox, err error) bool {
	if !isErrno(err, syscall.ESTALE) && !isErrno(err, syscall.ENOENT) {
		return false
	}
	// Only a tombstone read says so: an error reading the lock (EIO, a
	// lookup the gate gave up on) says nothing about where our entry is.
	terr := s.checkTombstone(mb.at(LockName))
	var moved *MovedError
	if !errors.As(terr, &moved) && !errors.Is(terr, errBeingMoved) {
		return false
	}
	s.log.Info("new/ was sealed by a move after the message was published there; the move carries it", "maildir", mb.Path)
	return true
}

// MovedTo is the volume a finished move of mb went to, as its tombstone
// says; "" when mb is no tombstone of a finished move (a live Maildir, a
// session's lock, a move still switching). Admin tools use it to find a
// mailbox that was moved before (nfsdrop maildir move); deliveries and
// logins meet the tombstone on their own (checkTombstone).
func (s *Store) MovedTo(mb Mailbox) (string, error) {
	target, err := s.fs.Readlink(filepath.Join(mb.Path, LockName))
	if isErrno(err, syscall.ENOENT) || isErrno(err, syscall.EINVAL) {
		return "", nil // no lock, or an old-style lock file
	}
	if err != nil {
		return "", s.classify("read lock", err)
	}
	state, volume, ok := tombstone(target)
	if !ok || state != tombstoneMoved {
		return "", nil
	}
	return volume, nil
}
