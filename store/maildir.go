package store

import (
	"os"
	"path/filepath"
	"syscall"
)

// SpoolName is the directory under the mail root where a message for
// several recipients is staged (in its tmp/): it belongs to no recipient,
// so no recipient's trouble fails the others, and it is on the same
// filesystem as the Maildirs, so recipients get hard links of it. No
// mailbox may lie in it.
const SpoolName = ".nfsdrop-spool"

func (s *Store) spoolDir() string { return filepath.Join(s.root, SpoolName) }

// EnsureMaildir creates mb's Maildir (new/, cur/, tmp/, mode 0700, owned
// by the mailbox's uid/gid when chowning) if it does not exist yet, or
// completes one that lacks some of them, after checking the mount guard.
// The path is resolved beneath the mail root under the symlink rule of
// pinMaildir (confine.go): an administrator's in-root link above the
// Maildir is followed, one owned by anyone else is refused.
func (s *Store) EnsureMaildir(mb Mailbox) error {
	pinned, err := s.pinMaildir(mb, maildirSubdirs[:]...)
	if err != nil {
		return err
	}
	pinned.release()
	return nil
}

// mkdir makes one directory; an existing one is fine (another machine may
// have made it, or our retransmitted MKDIR found its own work done): the
// caller opens it next, which refuses anything but a directory or a link
// to one allowed by the symlink rule.
func (s *Store) mkdir(dir string, mode os.FileMode, mb Mailbox, own bool) error {
	err := s.retryStale(func() error { return s.fs.Mkdir(dir, mode) })
	if err == nil {
		if own && s.chown && (mb.UID >= 0 || mb.GID >= 0) {
			if err := s.fs.Lchown(dir, mb.UID, mb.GID); err != nil {
				return s.classify("chown maildir", err)
			}
		}
		return nil
	}
	if isErrno(err, syscall.EEXIST) {
		return nil
	}
	return s.classify("mkdir", err)
}
