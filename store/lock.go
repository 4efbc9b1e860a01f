package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// LockName is the session lock's file name in a Maildir.
const LockName = "nfsdrop-pop3.lock"

// ClockProbeSuffix ends the name of the symlink a contender makes in tmp/
// to read the file server's clock; StaleLockSuffix that of a lock renamed
// aside during a takeover. Both are symlinks the tmp/ sweeper removes when
// a crash left them.
const (
	ClockProbeSuffix = ".clock"
	StaleLockSuffix  = ".stale-lock"
)

// MinLockStale is the shortest staleness accepted: a lock is refreshed
// every third of the stale time, and an NFS server that stalls for a few
// seconds must not make a live lock look dead.
const MinLockStale = 30 * time.Second

// errLockLost says that the lock name positively holds another session's
// lock (not that the lock could not be read).
var errLockLost = errors.New("session lock taken over by another session")

// dotlock is a Maildir session lock that works across NFS clients, where
// flock/fcntl locks may not (NLM off, or broken): the lock is a symlink
// named LockName whose target is a token unique to this session.
// symlink() either makes the name or fails with EEXIST, in one call, on
// every NFS version (a SYMLINK, or a CREATE of a link on NFSv4); the token
// costs no WRITE since it is the link's target, and releasing is one
// REMOVE. (Emacs lock files and Mozilla's profile lock are symlinks for the
// same reason.) Taking the lock costs one mutating call, where the NFSv2
// way (write a file in tmp/, link() it to the lock name, unlink the tmp/
// name) costs five on NFSv3, and an O_EXCL lock file three (CREATE,
// SETATTR, WRITE).
//
// Identity: the target's first word is the token (the session's unique
// name, unique across machines by construction). Whether the lock name
// still holds this session's lock is decided by that token, never by the
// inode number alone, which NFS servers reuse: a lock removed and another
// created may get the same number. A symlink never changes once made, so
// reading it (a GETATTR that asks the server, then READLINK, which the
// client answers from its cache for an inode it has read before) shows
// whatever the name holds now.
//
// Time: every age is judged on the file server's clock, never on this
// machine's. The holder refreshes the lock's own times (not its target's)
// with utimensat(UTIME_NOW, AT_SYMLINK_NOFOLLOW), which sets them to the
// server's "now"; a contender that finds the name taken compares the
// lock's mtime with the mtime of a symlink it makes in tmp/ for that
// purpose (the server's "now" at that moment). Clock skew between
// machines and the server therefore does not matter to the lock. The
// holder's own "now" is the mtime of the lock it has just made.
//
// Taking over a stale lock renames it aside (only one contender can rename
// a given name), then reads what was renamed: the token and mtime that
// were judged stale, or else a lock that a faster contender had just made
// (or the old holder refreshed meanwhile) was renamed by mistake and is
// put back with link() (of the symlink itself, not its target), which
// fails with EEXIST where rename() would overwrite a lock a third session
// made while the name was free, and keeps the lock's inode and mtime.
//
// Before it deletes anything, the holder checks that the lock name holds
// its token (Held), so a session whose lock was taken over deletes nothing.
//
// A lock file left by an older nfsdrop (a regular file, the token on its
// first line) is read as well: both kinds hold the same name, so old and
// new machines exclude each other during an upgrade.
type dotlock struct {
	s *Store
	// path names the lock through the pinned Maildir (for the FS
	// methods); name is its path, for messages.
	path, name string
	// scratch is the directory of the Maildir where contenders make
	// their clock probes and rename stale locks aside: "tmp" for the
	// session lock, "" (the Maildir itself) for a move's lock, which
	// outlives tmp/.
	scratch string
	token   string
	// filerNow is the server's clock when this session's lock was made
	// (its mtime), before the session listed the Maildir.
	filerNow time.Time

	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex // serialises checks and refreshes
	lost     bool       // the lock name held another session's token
	released bool
	// stale is lock_stale; refreshed (this machine's clock) is when the
	// lock was made or last refreshed, under mu. No contender can judge
	// the lock stale before refreshed+stale: releaseLater stops well
	// before that, so that its read-then-remove never meets a takeover.
	stale     time.Duration
	refreshed time.Time
}

// lockFile is what a lock file says about itself.
type lockFile struct {
	token string
	mtime time.Time
}

func (a lockFile) same(b lockFile) bool { return a.token == b.token && a.mtime.Equal(b.mtime) }

// readLock reads the lock at path: its attributes as the server has them
// now (LstatFresh: one GETATTR, and a name whose file was removed on the
// server is looked up again), then its token.
func (s *Store) readLock(path string) (lockFile, error) {
	var lf lockFile
	err := s.retryStale(func() error {
		info, err := s.fs.LstatFresh(path)
		if err != nil {
			return err
		}
		var token string
		if info.Mode&fs.ModeSymlink != 0 {
			token, err = s.fs.Readlink(path)
		} else {
			// An older nfsdrop's lock file: the token is its first line.
			var data []byte
			data, _, err = s.readSmall(path)
			token, _, _ = strings.Cut(string(data), "\n")
		}
		if err != nil {
			return err
		}
		word, _, _ := strings.Cut(strings.TrimSpace(token), " ")
		lf = lockFile{token: word, mtime: info.ModTime}
		return nil
	})
	return lf, err
}

func inUse() error {
	return failure.New(failure.InUse, "session lock", "mailbox in use by another session", nil)
}

// acquireLock takes mb's session lock or fails with failure.InUse. mb is
// pinned (pin.go): every name the lock uses, its own and those in tmp/, is
// reached through the Maildir verified when the session opened it.
func (s *Store) acquireLock(mb Mailbox, stale time.Duration, owner string) (*dotlock, error) {
	return s.acquireLockAt(mb, LockName, "tmp", stale, owner)
}

// acquireLockAt is acquireLock for the lock named name in mb, with its
// scratch directory (see dotlock.scratch).
func (s *Store) acquireLockAt(mb Mailbox, name, scratch string, stale time.Duration, owner string) (*dotlock, error) {
	stale = max(stale, MinLockStale)
	token := s.newBase()
	// The target says who holds the lock to whoever looks (ls -l); only
	// its first word, the token, is the lock's identity.
	target := fmt.Sprintf("%s %s %s pid %d since %s", token, owner, s.host, s.pid, s.now().UTC().Format(time.RFC3339))
	l := &dotlock{s: s, path: mb.at(name), name: filepath.Join(mb.Path, name), scratch: scratch, token: token,
		stop: make(chan struct{}), done: make(chan struct{})}
	var filerNow time.Time // read once, only when another session's lock is met
	for attempt := 0; attempt < 3 && l.filerNow.IsZero(); attempt++ {
		err := s.retryStale(func() error { return s.fs.Symlink(target, l.path) })
		if err != nil && !isErrno(err, syscall.EEXIST) {
			// A SYMLINK that answered EIO (a lost reply) may have been
			// made: a lock of ours left there would keep the mailbox
			// (and a move's switch) out for lock_stale.
			if cur, rerr := s.readLock(l.path); rerr == nil && cur.token == token {
				l.filerNow = cur.mtime
				continue
			}
			return nil, s.classify("take session lock", err)
		}
		if err == nil {
			// Its attributes came with the SYMLINK reply: the mtime is
			// the server's clock now.
			info, err := s.fs.Lstat(l.path)
			if err != nil {
				// Made a moment ago and not stale for lock_stale: ours
				// to remove.
				s.fs.Remove(l.path)
				return nil, s.classify("read session lock", err)
			}
			l.filerNow = info.ModTime
			continue
		}
		// EEXIST: another lock, or ours after a lost SYMLINK reply (the
		// retransmission answers EEXIST).
		current, rerr := s.readLock(l.path)
		switch {
		case isErrno(rerr, syscall.ENOENT):
			continue // released meanwhile: try again
		case rerr != nil:
			return nil, s.classify("read session lock", rerr)
		case isTombstone(current.token):
			// A moved (or moving) Maildir: never stale, never taken over.
			state, vol, _ := tombstone(current.token)
			return nil, tombstoneError(state, vol, true)
		case current.token == token:
			l.filerNow = current.mtime
			continue
		}
		if filerNow.IsZero() {
			if filerNow, err = s.filerClock(mb, scratch, token); err != nil {
				return nil, s.classify("read the file server's clock", err)
			}
		}
		// Both times are the server's: the lock's age is independent of
		// this machine's clock. filerNow is older than now, so the age is
		// never overestimated by more than the server's timestamp
		// granularity.
		age := filerNow.Sub(current.mtime)
		if age < stale {
			return nil, inUse()
		}
		if err := s.takeOverStale(mb, l, current, age); err != nil {
			return nil, err
		}
	}
	if l.filerNow.IsZero() {
		return nil, inUse()
	}
	l.stale, l.refreshed = stale, s.now()
	go l.refresh(stale / 3)
	return l, nil
}

// filerClock reads the file server's clock: the mtime of a symlink made
// in mb's scratch directory (tmp/) for the purpose, then removed (a
// leftover is swept).
func (s *Store) filerClock(mb Mailbox, scratch, token string) (time.Time, error) {
	probe := mb.at(scratch, s.newBase()+ClockProbeSuffix)
	if err := s.retryStale(func() error { return s.fs.Symlink(token, probe) }); err != nil && !isErrno(err, syscall.EEXIST) {
		return time.Time{}, err
	}
	defer s.fs.Remove(probe)
	info, err := s.fs.Lstat(probe)
	if err != nil {
		return time.Time{}, err
	}
	return info.ModTime, nil
}

// takeOverStale removes the lock seen (judged stale: age on the server's
// clock) from lockPath. nil means "link again"; failure.InUse that the
// lock is someone else's after all; any other error is temporary.
func (s *Store) takeOverStale(mb Mailbox, l *dotlock, seen lockFile, age time.Duration) error {
	lockPath := l.path
	// Aside in tmp/: whatever is left there after a crash is swept.
	asideBase := s.newBase() + StaleLockSuffix
	aside, asideName := mb.at(l.scratch, asideBase), filepath.Join(mb.Path, l.scratch, asideBase)
	if err := s.retryStale(func() error { return s.fs.Rename(lockPath, aside) }); err != nil {
		if !isErrno(err, syscall.ENOENT) {
			return s.classify("take over session lock", err)
		}
		// Another contender renamed it first, or our RENAME's reply was
		// lost and the retransmission found nothing: did we move it?
		if _, lerr := s.fs.Lstat(aside); lerr != nil {
			return nil
		}
	}
	got, err := s.readLock(aside)
	if err == nil && got.same(seen) {
		if rerr := s.fs.Remove(aside); rerr != nil && !isErrno(rerr, syscall.ENOENT) {
			s.log.Warn("could not remove a stale session lock; the tmp/ sweeper will", "path", asideName, "err", rerr)
		}
		s.obs.LockTakeover()
		s.log.Info("took over a stale session lock", "path", l.name, "age", age.Round(time.Second), "token", seen.token)
		return nil
	}
	// Renamed by mistake (a contender's fresh lock, or the holder
	// refreshed it after we looked), or we cannot tell: put it back.
	s.putBackLock(aside, asideName, l, got, err == nil)
	if err != nil {
		return s.classify("read session lock", err)
	}
	return inUse()
}

// putBackLock returns a lock renamed aside by mistake to lockPath. It uses
// link() (of the symlink itself), which fails with EEXIST instead of
// overwriting a lock that a third session created while the name was free (that session holds the
// mailbox then; the lock's owner finds another token and deletes nothing).
// known says whether want (what aside holds) could be read.
func (s *Store) putBackLock(aside, asideName string, l *dotlock, want lockFile, known bool) {
	lockPath := l.path
	lerr := s.retryStale(func() error { return s.fs.Link(aside, lockPath) })
	back := lerr == nil
	if known {
		// A LINK whose reply was lost answers EEXIST although the lock
		// is back; only the token at the name says.
		cur, err := s.readLock(lockPath)
		back = err == nil && cur.token == want.token
	}
	if !back {
		s.log.Warn("could not restore a session lock renamed during takeover; its session will delete nothing", "path", l.name, "err", lerr)
	}
	if err := s.fs.Remove(aside); err != nil && !isErrno(err, syscall.ENOENT) {
		s.log.Warn("could not remove a session lock's second name; the tmp/ sweeper will", "path", asideName, "err", err)
	}
}

// check reads the lock name: nil when it holds this session's token,
// errLockLost when it positively holds another's, any other error when it
// cannot tell (an I/O error; or no lock file, which is also what a session
// sees while a contender that renamed its lock by mistake puts it back).
func (l *dotlock) check() error {
	cur, err := l.s.readLock(l.path)
	if err != nil {
		return err
	}
	if cur.token != l.token {
		return errLockLost
	}
	return nil
}

// markLost records that the lock is someone else's; l.mu is held.
func (l *dotlock) markLost() {
	if !l.lost {
		l.lost = true
		l.s.log.Warn("session lock was taken over by another session", "path", l.name)
	}
}

// refresh keeps the lock fresh every interval. A round that fails for
// any reason but a lost lock (EIO, ETIMEDOUT, ESTALE, EAGAIN...) is tried
// again after a quarter of the interval: two failed rounds in a row must
// not let a live lock go stale. It stops when the lock is released or is
// positively someone else's.
func (l *dotlock) refresh(every time.Duration) {
	defer close(l.done)
	wait := every
	for {
		select {
		case <-l.stop:
			return
		case <-l.s.after(wait):
		}
		err := l.refreshOnce()
		switch {
		case err == nil:
			wait = every
		case errors.Is(err, errLockLost):
			return
		default:
			wait = every / 4
			l.s.log.Warn("could not refresh session lock; retrying", "path", l.name, "err", err, "retry_in", wait)
		}
	}
}

func (l *dotlock) refreshOnce() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost {
		return errLockLost
	}
	if err := l.check(); err != nil {
		if errors.Is(err, errLockLost) {
			l.markLost()
		}
		return err
	}
	if err := l.s.retryStale(func() error { return l.s.fs.TouchNow(l.path) }); err != nil {
		return err
	}
	l.refreshed = l.s.now()
	return nil
}

// Held reports whether the lock name holds this session's lock now. False
// when it cannot tell: the caller then deletes nothing.
func (l *dotlock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost || l.released {
		return false
	}
	err := l.check()
	switch {
	case err == nil:
		return true
	case errors.Is(err, errLockLost):
		l.markLost()
	default:
		l.s.log.Warn("could not check the session lock", "path", l.name, "err", err)
	}
	return false
}

// Release removes the lock if it is still ours.
func (l *dotlock) Release() {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return
	}
	l.released = true
	lost := l.lost
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	if lost {
		return
	}
	if err := l.check(); err != nil {
		if !errors.Is(err, errLockLost) && !isErrno(err, syscall.ENOENT) {
			l.s.log.Warn("could not check the session lock before removing it; trying again in the background", "path", l.name, "err", err)
			go l.releaseLater()
		}
		return
	}
	if err := l.s.retryStale(func() error { return l.s.fs.Remove(l.path) }); err != nil && !isErrno(err, syscall.ENOENT) {
		l.s.log.Warn("could not remove session lock; trying again in the background", "path", l.name, "err", err)
		go l.releaseLater()
	}
}

// releaseRetry is how often releaseLater tries again.
const releaseRetry = time.Second

// releaseLater tries again to remove the lock of a session that ended
// while the filer could not be reached (its volume marked down by the
// hung-filer gate, a timeout): left alone, that lock would keep the
// mailbox [IN-USE] for a whole lock_stale after the filer is back (seen
// when a login took the lock just as the filer came back, then failed on
// the volume still marked down). It goes by the lock's real name (the
// session's pinned Maildir is closed by now) and removes it only while it
// holds this session's token, and only until half of lock_stale after the
// lock was last made fresh: until then no contender may take it over, so
// the token read cannot be overtaken by a takeover before the remove.
// After that the lock goes stale and is taken over anyway.
func (l *dotlock) releaseLater() {
	l.mu.Lock()
	deadline := l.refreshed.Add(l.stale / 2)
	l.mu.Unlock()
	if l.stale <= 0 {
		return
	}
	for l.s.now().Before(deadline) {
		<-l.s.after(releaseRetry)
		cur, err := l.s.readLock(l.name)
		switch {
		case isErrno(err, syscall.ENOENT):
			return
		case err != nil:
			continue
		case cur.token != l.token:
			return // taken over meanwhile: not ours to remove
		}
		err = l.s.retryStale(func() error { return l.s.fs.Remove(l.name) })
		if err == nil || isErrno(err, syscall.ENOENT) {
			l.s.log.Warn("removed the session lock of an ended session once the filer answered", "path", l.name)
			return
		}
	}
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

// replaceWith puts a symlink whose target is target (a move's tombstone,
// tombstone.go) in place of this session's lock with one rename, so that
// the name is never free in between, and stops holding the lock: its
// refresher stops and Release removes nothing. draft is a name in the
// Maildir for the new symlink until the rename.
func (l *dotlock) replaceWith(target, draft string) error {
	l.mu.Lock()
	if l.lost || l.released {
		l.mu.Unlock()
		return errLockLost
	}
	err := l.check()
	if err == nil {
		err = l.s.replaceSymlink(target, draft, l.path)
	}
	if err == nil {
		l.released = true
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	close(l.stop)
	<-l.done
	return nil
}

// replaceSymlink makes a symlink to target at draft and renames it over
// path. A RENAME whose reply was lost answers an error although it was
// made: path holding target then is success.
func (s *Store) replaceSymlink(target, draft, path string) error {
	if err := s.fs.Remove(draft); err != nil && !isErrno(err, syscall.ENOENT) {
		return err
	}
	if err := s.retryStale(func() error { return s.fs.Symlink(target, draft) }); err != nil && !isErrno(err, syscall.EEXIST) {
		return err
	}
	err := s.retryStale(func() error { return s.fs.Rename(draft, path) })
	if err != nil && mayHaveHappened(err) {
		if lf, rerr := s.readLock(path); rerr == nil && lf.token == target {
			return nil
		}
	}
	if err != nil {
		s.fs.Remove(draft) // best effort: a move's rollback removes it too
	}
	return err
}
