package store

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

var stale30 = SessionOptions{LockStale: 30 * time.Second, Owner: "test"}

// failTimes makes the first n calls of op on path fail with errno, without
// running them; other calls pass.
func failTimes(fault *faultFS, op, path string, n int, errno syscall.Errno) {
	var mu sync.Mutex
	fault.mu.Lock()
	defer fault.mu.Unlock()
	fault.hook = func(gotOp, gotPath string, real func() error) error {
		mu.Lock()
		hit := gotOp == op && gotPath == path && n > 0
		if hit {
			n--
		}
		mu.Unlock()
		if hit {
			return errno
		}
		return real()
	}
}

func isInUse(err error) bool { return err != nil && failure.KindOf(err) == failure.InUse }

func setHook(fault *faultFS, h func(op, path string, real func() error) error) {
	fault.mu.Lock()
	fault.hook = h
	fault.mu.Unlock()
}

func countNew(t *testing.T, mb Mailbox) int {
	t.Helper()
	return len(listDir(t, filepath.Join(mb.Path, "new")))
}

// lockedSession is a POP3 session of machine a, one of two machines
// (filerMachines) on a fake filer, over a mailbox with messages in new/;
// the test fires a's timers (the lock refresher's and releaseLater's).
type lockedSession struct {
	filer    *fakeFiler
	fault    *faultFS
	a, b     *Store
	timers   *manualTimers
	mb       Mailbox
	sess     *Session
	lockPath string
}

// openLockedSession delivers messages into the mailbox name and opens a
// session on it from machine a.
func openLockedSession(t *testing.T, name string, messages int) *lockedSession {
	t.Helper()
	filer, fault, st, root := filerMachines(t, 0, 0)
	l := &lockedSession{filer: filer, fault: fault, a: st[0], b: st[1], timers: newManualTimers(), mb: mailbox(root, name)}
	l.a.after = l.timers.after
	deliverN(t, l.a, l.mb, messages)
	var err error
	if l.sess, err = l.a.OpenSession(l.mb, stale30); err != nil {
		t.Fatal(err)
	}
	l.lockPath = filepath.Join(l.mb.Path, LockName)
	return l
}

// Finding 7: a transient error while refreshing is retried; the refresher
// stops only when the lock is positively someone else's.
func TestLockRefreshSurvivesTransientErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		op    string
		times int
		errno syscall.Errno
	}{
		{"lstat EIO", "lstat", 1, syscall.EIO},
		{"lstat ETIMEDOUT", "lstat", 1, syscall.ETIMEDOUT},
		{"lstat ESTALE beyond the retries", "lstat", 6, syscall.ESTALE},
		{"readlink EAGAIN", "readlink", 1, syscall.EAGAIN},
		{"touch EIO", "touch", 1, syscall.EIO},
		{"touch ESTALE twice", "touch", 2, syscall.ESTALE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := openLockedSession(t, "refresh", 2)
			filer, timers, mb := l.filer, l.timers, l.mb
			failTimes(l.fault, tc.op, l.lockPath, tc.times, tc.errno)
			// Let twice the stale time pass on the filer's clock, one
			// refresher round at a time.
			for start := filer.Now(); filer.Now().Sub(start) < 2*stale30.LockStale; {
				w := timers.next(t)
				filer.Advance(w.d)
				w.fire <- filer.Now()
			}
			timers.next(t) // the last round finished
			if _, err := l.b.OpenSession(mb, stale30); !isInUse(err) {
				t.Fatalf("another session opened the mailbox of a live session: %v", err)
			}
			if err := l.sess.Commit([]int{0, 1}, nil); err != nil {
				t.Fatalf("commit: %v", err)
			}
			if n := countNew(t, mb); n != 0 {
				t.Fatalf("%d messages left: the session lost its lock", n)
			}
		})
	}
}

// A refresher stops when its lock was taken over, and that session
// deletes nothing.
func TestLockRefresherStopsWhenTakenOver(t *testing.T) {
	filer, _, st, root := filerMachines(t, 0, 0)
	a, b := st[0], st[1]
	timers := newManualTimers()
	a.after = timers.after
	mb := mailbox(root, "lost")
	deliverN(t, a, mb, 2)
	sess, err := a.OpenSession(mb, stale30)
	if err != nil {
		t.Fatal(err)
	}
	w := timers.next(t)
	filer.Advance(31 * time.Second) // the refresher stalled past the stale time
	other, err := b.OpenSession(mb, stale30)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	w.fire <- filer.Now()
	select {
	case <-sess.lock.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the refresher goes on with a lock that is someone else's")
	}
	if err := sess.Commit([]int{0, 1}, nil); err == nil {
		t.Fatal("a session whose lock was taken over committed deletions")
	}
	if n := countNew(t, mb); n != 2 {
		t.Fatalf("%d messages left, want 2", n)
	}
	if !other.lock.Held() {
		t.Fatal("the session that took over lost the lock")
	}
	other.Close()
}

// Finding 8: a lock's age is judged on the filer's clock, whatever the
// local clocks say.
func TestLockAgeOnFilerClock(t *testing.T) {
	for _, tc := range []struct {
		name   string
		offset time.Duration // contender's clock minus the filer's
		age    time.Duration // since the holder's last refresh
		takeOK bool
	}{
		{"contender 20s ahead, live lock", 20 * time.Second, 15 * time.Second, false},
		{"contender 20s behind, live lock", -20 * time.Second, 15 * time.Second, false},
		{"contender 20s ahead, dead lock", 20 * time.Second, 35 * time.Second, true},
		{"contender 20s behind, dead lock", -20 * time.Second, 35 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			filer, _, st, root := filerMachines(t, 0, tc.offset)
			a, b := st[0], st[1]
			mb := mailbox(root, "skew")
			deliverN(t, a, mb, 1)
			holder, err := a.OpenSession(mb, stale30)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			filer.Advance(tc.age)
			other, err := b.OpenSession(mb, stale30)
			if tc.takeOK {
				if err != nil {
					t.Fatalf("a lock %v old was not taken over: %v", tc.age, err)
				}
				other.Close()
				return
			}
			if !isInUse(err) {
				t.Fatalf("a live lock (%v old) was taken over: %v", tc.age, err)
			}
			if !holder.lock.Held() {
				t.Fatal("the holder lost its lock")
			}
		})
	}
}

// Finding 8: the listing cache's "changed within the timestamp
// granularity" rule uses the filer's clock: a message delivered in the
// same filer second as the listing is not missed.
func TestListingCacheOnFilerClock(t *testing.T) {
	for _, offset := range []time.Duration{2 * time.Second, 20 * time.Second, -20 * time.Second} {
		t.Run("local clock "+offset.String(), func(t *testing.T) {
			filer, _, st, root := filerMachines(t, offset)
			a := st[0]
			mb := mailbox(root, "cache")
			deliverN(t, a, mb, 1)
			filer.Advance(300 * time.Millisecond)
			s1, err := a.OpenSession(mb, stale30)
			if err != nil {
				t.Fatal(err)
			}
			s1.Close()
			deliverN(t, a, mb, 1) // the same filer second: new/'s stamp is unchanged
			filer.Advance(100 * time.Millisecond)
			s2, err := a.OpenSession(mb, stale30)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(s2.Entries()); n != 2 {
				t.Fatalf("listing has %d messages, want 2 (cache %s)", n, s2.CacheResult())
			}
			s2.Close()
			// Later on, the cache serves again.
			filer.Advance(5 * time.Second)
			for i := 0; i < 2; i++ {
				s, err := a.OpenSession(mb, stale30)
				if err != nil {
					t.Fatal(err)
				}
				if n := len(s.Entries()); n != 2 {
					t.Fatalf("listing has %d messages, want 2", n)
				}
				s.Close()
				if i == 1 && s.CacheResult() != "hit" {
					t.Fatalf("an unchanged mailbox was listed again (%s)", s.CacheResult())
				}
			}
		})
	}
}

// Finding 11a: a lock file removed and another created may get the same
// inode number; the lock's identity is its content.
func TestLockIdentitySurvivesInodeReuse(t *testing.T) {
	filer, _, st, root := filerMachines(t, 0, 0, 0)
	filer.reuseLockInodes = true
	a, b, c := st[0], st[1], st[2]
	mb := mailbox(root, "reuse")
	deliverN(t, a, mb, 2)
	first, err := a.OpenSession(mb, stale30)
	if err != nil {
		t.Fatal(err)
	}
	filer.Advance(31 * time.Second) // first's NFS stalled
	second, err := b.OpenSession(mb, stale30)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	second.Close()
	third, err := c.OpenSession(mb, stale30)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Commit([]int{0, 1}, nil); err == nil {
		t.Fatal("a session whose lock was taken over committed (a new lock with its inode number)")
	}
	if n := countNew(t, mb); n != 2 {
		t.Fatalf("%d messages left, want 2", n)
	}
	if err := third.Commit([]int{0}, nil); err != nil {
		t.Fatal(err)
	}
	if n := countNew(t, mb); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
}

// takeoverRace is the interleaving of finding 11b, run deterministically:
// session A finds the lock of a dead session stale; just before A renames
// it aside, B takes the stale lock over, so that A renames B's fresh lock;
// just before A puts it back, duringPutBack runs.
type takeoverRace struct {
	a, b, c  *Store
	bSess    *Session
	mb       Mailbox
	lockPath string
}

func runTakeoverRace(t *testing.T, reuseInodes bool, duringPutBack func(r *takeoverRace, putBack func() error) error) (*takeoverRace, error) {
	t.Helper()
	filer, fault, st, root := filerMachines(t, 0, 0, 0, 0)
	filer.reuseLockInodes = reuseInodes
	r := &takeoverRace{a: st[0], b: st[1], c: st[2], mb: mailbox(root, "race")}
	dead := st[3]
	deliverN(t, r.a, r.mb, 2)
	if _, err := dead.OpenSession(r.mb, stale30); err != nil {
		t.Fatal(err)
	}
	filer.Advance(31 * time.Second)
	r.lockPath = filepath.Join(r.mb.Path, LockName)
	var mu sync.Mutex
	step := 0
	setHook(fault, func(op, path string, real func() error) error {
		mu.Lock()
		s := step
		switch {
		case s == 0 && op == "rename" && strings.Contains(filepath.Base(path), "stale"):
			step = 1
		case s == 2 && op == "link" && path == r.lockPath:
			step = 3
		default:
			mu.Unlock()
			return real()
		}
		mu.Unlock()
		if s == 0 {
			// B takes the stale lock over first.
			var err error
			if r.bSess, err = r.b.OpenSession(r.mb, stale30); err != nil {
				t.Errorf("B: %v", err)
			}
			mu.Lock()
			step = 2
			mu.Unlock()
			return real()
		}
		return duringPutBack(r, real)
	})
	_, aErr := r.a.OpenSession(r.mb, stale30)
	setHook(fault, nil)
	mu.Lock()
	defer mu.Unlock()
	if step < 2 || r.bSess == nil {
		t.Fatalf("the interleaving did not happen (step %d)", step)
	}
	return r, aErr
}

// Finding 11b: A puts B's lock back; B, which looked while its lock was
// aside (and must not delete then), still holds it afterwards, and deletes.
func TestTakeoverPutBack(t *testing.T) {
	r, aErr := runTakeoverRace(t, false, func(r *takeoverRace, putBack func() error) error {
		if r.bSess.lock.Held() {
			t.Error("B claims a lock that is renamed aside")
		}
		return putBack()
	})
	if !isInUse(aErr) {
		t.Fatalf("A: want InUse, got %v", aErr)
	}
	if !r.bSess.lock.Held() {
		t.Fatal("B lost its lock, which A put back")
	}
	if err := r.bSess.Commit([]int{0, 1}, nil); err != nil {
		t.Fatalf("B's commit: %v", err)
	}
	if n := countNew(t, r.mb); n != 0 {
		t.Fatalf("%d messages left", n)
	}
}

// Finding 11b: while B's lock is aside, a third session C takes the free
// name. A's put-back must not overwrite C's lock: C holds the lock, B has
// lost it and deletes nothing.
func TestTakeoverPutBackThirdSession(t *testing.T) {
	var cSess *Session
	r, aErr := runTakeoverRace(t, false, func(r *takeoverRace, putBack func() error) error {
		var err error
		if cSess, err = r.c.OpenSession(r.mb, stale30); err != nil {
			t.Errorf("C: %v", err)
		}
		return putBack()
	})
	if !isInUse(aErr) {
		t.Fatalf("A: want InUse, got %v", aErr)
	}
	if cSess == nil {
		t.Fatal("C has no session")
	}
	if !cSess.lock.Held() {
		t.Fatal("C lost its lock to A's put-back")
	}
	if err := r.bSess.Commit([]int{0}, nil); err == nil {
		t.Fatal("B committed without the lock")
	}
	if n := countNew(t, r.mb); n != 2 {
		t.Fatalf("%d messages left after B, want 2", n)
	}
	if err := cSess.Commit([]int{0, 1}, nil); err != nil {
		t.Fatalf("C's commit: %v", err)
	}
	if n := countNew(t, r.mb); n != 0 {
		t.Fatalf("%d messages left after C", n)
	}
}

// Finding 11a at takeover: with inode numbers reused, A must still see
// that what it renamed aside is B's fresh lock, not the stale one.
func TestTakeoverInodeReuse(t *testing.T) {
	r, aErr := runTakeoverRace(t, true, func(_ *takeoverRace, putBack func() error) error { return putBack() })
	if !isInUse(aErr) {
		t.Fatalf("A took B's fresh lock (reused inode number): %v", aErr)
	}
	if !r.bSess.lock.Held() {
		t.Fatal("B lost its lock")
	}
	r.bSess.Close()
}

// The put-back's LINK reply is lost: the retransmission answers EEXIST
// although B's lock is back; A must see that it is.
func TestTakeoverPutBackLostReply(t *testing.T) {
	r, aErr := runTakeoverRace(t, false, func(_ *takeoverRace, putBack func() error) error {
		if err := putBack(); err != nil {
			return err
		}
		return syscall.EEXIST
	})
	if !isInUse(aErr) {
		t.Fatalf("A: want InUse, got %v", aErr)
	}
	if !r.bSess.lock.Held() {
		t.Fatal("B lost its lock")
	}
	r.bSess.Close()
}

// TestLockFaults injects a fault into each step of taking, checking and
// releasing the lock: the mailbox is never held by two sessions, a session
// that cannot tell whether it holds the lock deletes nothing, and an I/O
// error is a temporary failure, not "in use".
func TestLockFaults(t *testing.T) {
	type env struct {
		filer    *fakeFiler
		fault    *faultFS
		a, b     *Store
		mb       Mailbox
		lockPath string
	}
	// setup: a's session holds the lock unless dead, then it is stale.
	setup := func(t *testing.T, dead bool) (*env, *Session) {
		filer, fault, st, root := filerMachines(t, 0, 0)
		e := &env{filer: filer, fault: fault, a: st[0], b: st[1], mb: mailbox(root, "faults")}
		e.lockPath = filepath.Join(e.mb.Path, LockName)
		deliverN(t, e.a, e.mb, 2)
		sess, err := e.a.OpenSession(e.mb, stale30)
		if err != nil {
			t.Fatal(err)
		}
		if dead {
			filer.Advance(31 * time.Second)
		}
		return e, sess
	}
	lockToken := func(t *testing.T, e *env) string {
		t.Helper()
		l, err := e.a.readLock(e.lockPath)
		if err != nil {
			t.Fatalf("read lock: %v", err)
		}
		return l.token
	}
	isAside := func(op, path string) bool { return strings.HasSuffix(path, ".stale-lock") }

	t.Run("contender cannot read the lock", func(t *testing.T) {
		e, sess := setup(t, true)
		failTimes(e.fault, "lstat", e.lockPath, 10, syscall.EIO)
		_, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err == nil || isInUse(err) || failure.KindOf(err) != failure.Temporary {
			t.Fatalf("want a temporary failure, got %v", err)
		}
		if lockToken(t, e) != sess.lock.token {
			t.Fatal("the lock changed")
		}
	})
	t.Run("rename aside fails", func(t *testing.T) {
		e, sess := setup(t, true)
		setHook(e.fault, func(op, path string, real func() error) error {
			if op == "rename" && isAside(op, path) {
				return syscall.EIO
			}
			return real()
		})
		_, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err == nil || isInUse(err) {
			t.Fatalf("want a temporary failure, got %v", err)
		}
		if lockToken(t, e) != sess.lock.token {
			t.Fatal("the lock changed")
		}
	})
	t.Run("rename aside reply lost", func(t *testing.T) {
		e, sess := setup(t, true)
		setHook(e.fault, func(op, path string, real func() error) error {
			if op == "rename" && isAside(op, path) {
				if err := real(); err != nil {
					return err
				}
				return syscall.ENOENT // the retransmission found nothing
			}
			return real()
		})
		other, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err != nil {
			t.Fatalf("stale lock not taken over: %v", err)
		}
		defer other.Close()
		if sess.lock.Held() || !other.lock.Held() {
			t.Fatal("wrong holder")
		}
		if n := len(listDir(t, filepath.Join(e.mb.Path, "tmp"))); n != 0 {
			t.Fatalf("%d files left in tmp/", n)
		}
	})
	t.Run("renamed lock unreadable", func(t *testing.T) {
		e, sess := setup(t, true)
		setHook(e.fault, func(op, path string, real func() error) error {
			if op == "readlink" && isAside(op, path) {
				return syscall.EIO
			}
			return real()
		})
		_, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err == nil || isInUse(err) {
			t.Fatalf("want a temporary failure, got %v", err)
		}
		if lockToken(t, e) != sess.lock.token {
			t.Fatal("the lock renamed aside was not put back")
		}
	})
	t.Run("put-back fails", func(t *testing.T) {
		e, sess := setup(t, true)
		renamed := false // only the put-back's link fails, not the first one
		setHook(e.fault, func(op, path string, real func() error) error {
			switch {
			case op == "rename" && isAside(op, path):
				renamed = true
			case op == "readlink" && isAside(op, path):
				return syscall.EIO
			case op == "link" && path == e.lockPath && renamed:
				return syscall.EIO
			}
			return real()
		})
		_, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err == nil || isInUse(err) {
			t.Fatalf("want a temporary failure, got %v", err)
		}
		// Nobody holds the lock now; its session cannot tell and deletes nothing.
		if err := sess.Commit([]int{0}, nil); err == nil {
			t.Fatal("committed without the lock")
		}
		if n := countNew(t, e.mb); n != 2 {
			t.Fatalf("%d messages left", n)
		}
	})
	t.Run("lock SYMLINK reply lost", func(t *testing.T) {
		e, sess := setup(t, false)
		sess.Close()
		setHook(e.fault, func(op, path string, real func() error) error {
			if op == "symlink" && path == e.lockPath {
				if err := real(); err != nil {
					return err
				}
				return syscall.EEXIST
			}
			return real()
		})
		s2, err := e.b.OpenSession(e.mb, stale30)
		setHook(e.fault, nil)
		if err != nil {
			t.Fatalf("a lost SYMLINK reply made the session fail: %v", err)
		}
		if !s2.lock.Held() {
			t.Fatal("not held")
		}
		s2.Close()
	})
	t.Run("commit cannot read the lock", func(t *testing.T) {
		e, sess := setup(t, false)
		failTimes(e.fault, "readlink", e.lockPath, 1, syscall.EIO)
		if err := sess.Commit([]int{0, 1}, nil); err == nil {
			t.Fatal("committed without knowing it holds the lock")
		}
		if n := countNew(t, e.mb); n != 2 {
			t.Fatalf("%d messages left", n)
		}
	})
	t.Run("release cannot read the lock", func(t *testing.T) {
		e, sess := setup(t, false)
		failTimes(e.fault, "lstat", e.lockPath, 10, syscall.EIO)
		sess.Close()
		setHook(e.fault, nil)
		if lockToken(t, e) != sess.lock.token {
			t.Fatal("a lock that could not be checked was removed")
		}
	})
	t.Run("release cannot remove the lock", func(t *testing.T) {
		e, sess := setup(t, false)
		failTimes(e.fault, "unlink", e.lockPath, 10, syscall.EIO)
		sess.Close()
		setHook(e.fault, nil)
		// It expires: a new session takes it over after the stale time.
		e.filer.Advance(31 * time.Second)
		s2, err := e.b.OpenSession(e.mb, stale30)
		if err != nil {
			t.Fatalf("left lock not taken over: %v", err)
		}
		s2.Close()
	})
}

// A lock file made by an older nfsdrop (a regular file, the token on its
// first line) holds the mailbox as before during an upgrade, and is taken
// over once stale on the filer's clock.
func TestLockOlderLockFileRespected(t *testing.T) {
	filer, _, st, root := filerMachines(t, 0)
	a := st[0]
	mb := mailbox(root, "upgrade")
	deliverN(t, a, mb, 1)
	lockPath := filepath.Join(mb.Path, LockName)
	if err := os.WriteFile(lockPath, []byte("1700000000.M1P1Q1R0.old\ntest old pid 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	filer.stamp(lockPath)
	if _, err := a.OpenSession(mb, stale30); !isInUse(err) {
		t.Fatalf("an older nfsdrop's live lock file was not respected: %v", err)
	}
	filer.Advance(31 * time.Second)
	sess, err := a.OpenSession(mb, stale30)
	if err != nil {
		t.Fatalf("a stale lock file of an older nfsdrop was not taken over: %v", err)
	}
	if !sess.lock.Held() {
		t.Fatal("not held")
	}
	sess.Close()
	if n := listDir(t, filepath.Join(mb.Path, "tmp")); len(n) != 0 {
		t.Fatalf("left in tmp/: %v", n)
	}
}

// TestLockReleasedWhenFilerAnswersAgain: a session whose lock could not be
// removed when it ended (the filer unreachable, or its volume marked down
// by the gate) removes it in the background once the filer answers,
// instead of keeping the mailbox [IN-USE] for lock_stale after the filer
// is back (seen in the lab: 30 s of [IN-USE] after a 60 s outage).
func TestLockReleasedWhenFilerAnswersAgain(t *testing.T) {
	l := openLockedSession(t, "release", 1)
	b, timers, mb, lockPath := l.b, l.timers, l.mb, l.lockPath
	failTimes(l.fault, "unlink", lockPath, 1, syscall.ETIMEDOUT)
	l.sess.Close()
	if _, err := b.OpenSession(mb, stale30); !isInUse(err) {
		t.Fatalf("the lock whose removal failed is gone at once: %v", err)
	}
	// The refresher's last wait (never fired: it stopped), then
	// releaseLater's.
	for w := timers.next(t); ; w = timers.next(t) {
		if w.d == releaseRetry {
			w.fire <- time.Now()
			break
		}
	}
	for i := 0; ; i++ {
		if _, err := os.Lstat(lockPath); os.IsNotExist(err) {
			break
		}
		if i == 1000 {
			t.Fatal("the lock was not removed once the filer answered")
		}
		time.Sleep(time.Millisecond)
	}
	other, err := b.OpenSession(mb, stale30)
	if err != nil {
		t.Fatalf("login after the lock was released: %v", err)
	}
	other.Close()
}
