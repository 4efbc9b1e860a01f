package store

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/failure"
)

// LockName is the session lock's file name in a Maildir.
const LockName = "nfsdrop-pop3.lock"

// MinLockStale is the shortest staleness accepted: clocks of NFS clients
// and the server differ by a little, and a lock is refreshed at a third of
// the stale time.
const MinLockStale = 30 * time.Second

// dotlock is a Maildir session lock that works across NFS clients, where
// flock/fcntl locks may not (NLM off, or broken) and O_EXCL is only as good
// as the server: a lock file is written under a unique name in tmp/ and
// hard-linked to LockName. link() either makes the name or fails with
// EEXIST, on every NFS version; a lost reply is recognised by the inode, as
// in delivery. The holder refreshes the file's time on the server's clock
// (utimensat UTIME_NOW) every third of the stale time; a lock not refreshed
// for the stale time belongs to a session that died and is taken over.
//
// Taking over is done by renaming the stale file to a unique name (only one
// contender can rename a given name) and checking that what was renamed is
// the inode seen to be stale; a fresh lock renamed by mistake is put back.
// Before it deletes anything, the holder checks that the lock is still its
// inode (Held), so a session whose lock was taken over deletes nothing.
type dotlock struct {
	s    *Store
	path string
	info Info // our lock file's identity

	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	lost     bool
	released bool
}

// acquireLock takes mb's session lock or fails with failure.InUse.
func (s *Store) acquireLock(mb Mailbox, stale time.Duration, owner string) (*dotlock, error) {
	if stale < MinLockStale {
		stale = MinLockStale
	}
	lockPath := mb.at(LockName)
	tmp := mb.at("tmp", s.newBase()+".lock")
	content := fmt.Sprintf("%s %s pid %d since %s\n", owner, s.host, s.pid, s.now().UTC().Format(time.RFC3339))
	f, err := s.fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, s.classify("create lock file", err)
	}
	_, werr := f.Write([]byte(content))
	info, serr := f.Stat()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = serr
	}
	defer s.fs.Remove(tmp)
	if werr != nil {
		return nil, s.classify("write lock file", werr)
	}
	for attempt := 0; attempt < 3; attempt++ {
		err := s.publishLink(tmp, info, lockPath)
		if err == nil {
			l := &dotlock{s: s, path: lockPath, info: info, stop: make(chan struct{}), done: make(chan struct{})}
			go l.refresh(stale / 3)
			return l, nil
		}
		if !isErrno(err, syscall.EEXIST) {
			return nil, s.classify("take session lock", err)
		}
		if !s.takeOverStale(lockPath, stale) {
			return nil, failure.New(failure.InUse, "session lock", "mailbox in use by another session", nil)
		}
	}
	return nil, failure.New(failure.InUse, "session lock", "mailbox in use by another session", nil)
}

// freshInfo stats path through an open file descriptor: on NFS, open()
// revalidates attributes (close-to-open), where lstat() may answer from the
// attribute cache.
func (s *Store) freshInfo(path string) (Info, error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	return f.Stat()
}

// takeOverStale removes lockPath if it has not been refreshed for stale;
// it reports whether the caller should try to link again.
func (s *Store) takeOverStale(lockPath string, stale time.Duration) bool {
	seen, err := s.freshInfo(lockPath)
	if err != nil {
		return isErrno(err, syscall.ENOENT) // released meanwhile: try again
	}
	if s.now().Sub(seen.ModTime) < stale {
		return false
	}
	aside := lockPath + ".stale." + s.newBase()
	if err := s.fs.Rename(lockPath, aside); err != nil {
		return isErrno(err, syscall.ENOENT) // someone else took it over
	}
	got, err := s.fs.Lstat(aside)
	if err == nil && !got.SameFile(seen) {
		// We renamed a lock that a faster contender had just made: put it
		// back (if nobody holds the name meanwhile) and give up.
		if lerr := s.fs.Link(aside, lockPath); lerr != nil {
			s.log.Warn("could not restore a session lock renamed during takeover", "path", lockPath, "err", lerr)
		}
		s.fs.Remove(aside)
		return false
	}
	s.fs.Remove(aside)
	s.obs.LockTakeover()
	s.log.Info("took over a stale session lock", "path", lockPath, "age", s.now().Sub(seen.ModTime).Round(time.Second))
	return true
}

func (l *dotlock) refresh(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if !l.Held() {
				return
			}
			if err := l.s.fs.TouchNow(l.path); err != nil {
				l.s.log.Warn("could not refresh session lock", "path", l.path, "err", err)
			}
		}
	}
}

// Held reports whether the lock file is still ours (not taken over).
func (l *dotlock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost || l.released {
		return false
	}
	info, err := l.s.freshInfo(l.path)
	if err != nil && isErrno(err, syscall.ESTALE) {
		info, err = l.s.freshInfo(l.path)
	}
	if err != nil || !info.SameFile(l.info) {
		if err == nil || isErrno(err, syscall.ENOENT) {
			l.lost = true
			l.s.log.Warn("session lock was taken over by another session", "path", l.path)
		}
		return false
	}
	return true
}

// Release removes the lock if it is still ours.
func (l *dotlock) Release() {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return
	}
	l.released = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	info, err := l.s.freshInfo(l.path)
	if err == nil && info.SameFile(l.info) {
		if err := l.s.fs.Remove(l.path); err != nil && !isErrno(err, syscall.ENOENT) {
			l.s.log.Warn("could not remove session lock", "path", l.path, "err", err)
		}
	}
}
