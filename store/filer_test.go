package store

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
)

// fakeFiler is a file server with a clock of its own, which the test sets:
// everything the store changes (a file it writes or touches, a directory
// whose entries change) is stamped with the filer's time in whole seconds,
// as many filers do, instead of the local clock. It reports ctime equal to
// mtime and directories with size 0, so that two changes within one filer
// second look alike, as they do on such a filer. With reuseLockInodes, every
// lock file (the lock, a lock written in tmp/, a lock renamed aside) reports
// the same inode number: an NFS server that reuses inode numbers.
type fakeFiler struct {
	FS              // the real calls, often through a *faultFS
	*testkit.Clock  // the filer's clock (Now, Advance)
	reuseLockInodes bool
}

func newFakeFiler(inner FS, now time.Time) *fakeFiler {
	return &fakeFiler{FS: inner, Clock: testkit.NewClock(now)}
}

// stamp sets paths' times (a symlink's own) to the filer's "now", in
// whole seconds.
func (f *fakeFiler) stamp(paths ...string) {
	ts := unix.NsecToTimespec(f.Now().Truncate(time.Second).UnixNano())
	for _, p := range paths {
		unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}
}

func (f *fakeFiler) report(name string, info Info) Info {
	info.ChangeAt = info.ModTime
	if info.Mode.IsDir() {
		info.Size = 0
	}
	if f.reuseLockInodes && isLockFile(name) {
		info.Ino = 42
	}
	return info
}

func isLockFile(name string) bool {
	base := filepath.Base(name)
	return base == LockName || strings.HasSuffix(base, ".lock") || strings.HasSuffix(base, ClockProbeSuffix) || strings.Contains(base, "stale")
}

func (f *fakeFiler) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if flag&os.O_CREATE != 0 {
		f.stamp(name, filepath.Dir(name))
	}
	return &filerFile{File: file, f: f, path: name}, nil
}

func (f *fakeFiler) Link(o, n string) error {
	err := f.FS.Link(o, n)
	f.stamp(filepath.Dir(n))
	return err
}

func (f *fakeFiler) Rename(o, n string) error {
	err := f.FS.Rename(o, n)
	f.stamp(filepath.Dir(o), filepath.Dir(n))
	return err
}

func (f *fakeFiler) Remove(n string) error {
	err := f.FS.Remove(n)
	f.stamp(filepath.Dir(n))
	return err
}

func (f *fakeFiler) Symlink(target, n string) error {
	err := f.FS.Symlink(target, n)
	if err == nil {
		f.stamp(n, filepath.Dir(n))
	}
	return err
}

func (f *fakeFiler) Mkdir(n string, p fs.FileMode) error {
	err := f.FS.Mkdir(n, p)
	if err == nil {
		f.stamp(n, filepath.Dir(n))
	}
	return err
}

// TouchNow sets the time on the filer's clock (SET_TO_SERVER_TIME).
func (f *fakeFiler) TouchNow(n string) error {
	if err := f.FS.TouchNow(n); err != nil {
		return err
	}
	f.stamp(n)
	return nil
}

func (f *fakeFiler) Lstat(n string) (Info, error) {
	info, err := f.FS.Lstat(n)
	if err != nil {
		return info, err
	}
	return f.report(n, info), nil
}

func (f *fakeFiler) LstatFresh(n string) (Info, error) {
	info, err := f.FS.LstatFresh(n)
	if err != nil {
		return info, err
	}
	return f.report(n, info), nil
}

type filerFile struct {
	File
	f    *fakeFiler
	path string
}

func (ff *filerFile) Write(p []byte) (int, error) {
	n, err := ff.File.Write(p)
	ff.f.stamp(ff.path)
	return n, err
}

func (ff *filerFile) Stat() (Info, error) {
	info, err := ff.File.Stat()
	if err != nil {
		return info, err
	}
	return ff.f.report(ff.path, info), nil
}

// manualTimers drives a store's lock refresher: every wait the refresher
// starts is handed to the test, which moves the filer's clock and fires it.
type manualTimers struct {
	waits chan manualWait
}

type manualWait struct {
	d    time.Duration
	fire chan time.Time
}

func newManualTimers() *manualTimers { return &manualTimers{waits: make(chan manualWait, 100)} }

func (m *manualTimers) after(d time.Duration) <-chan time.Time {
	w := manualWait{d: d, fire: make(chan time.Time, 1)}
	m.waits <- w
	return w.fire
}

// next is the refresher's next wait. That the refresher asks for one is the
// signal that it finished the previous round and goes on refreshing; a
// refresher that stopped never asks (the timeout only ends a failing test).
func (m *manualTimers) next(t *testing.T) manualWait {
	t.Helper()
	select {
	case w := <-m.waits:
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("the lock refresher stopped: it asked for no further wait")
	}
	return manualWait{}
}

// neverFires is a refresher timer that never fires: a session whose lock
// ages on the filer's clock while the test decides what happens.
func neverFires(time.Duration) <-chan time.Time { return nil }

// filerMachines makes one store per local clock offset (local time minus
// the filer's time) over one fake filer: machines sharing an NFS store whose
// clocks disagree with the filer's. Their refreshers never fire unless a
// test sets store.after.
func filerMachines(t *testing.T, offsets ...time.Duration) (*fakeFiler, *faultFS, []*Store, string) {
	t.Helper()
	fault := &faultFS{}
	// A filer clock not on a whole second, so truncation shows.
	filer := newFakeFiler(fault, time.Now().Truncate(time.Second).Add(200*time.Millisecond))
	var stores []*Store
	var root string
	for i, off := range offsets {
		host := "mx" + string(rune('1'+i))
		clock := func() time.Time { return filer.Now().Add(off) }
		var s *Store
		if i == 0 {
			s, root = newTestStore(t, filer, func(o *Options) { o.Hostname = host; o.Now = clock })
		} else {
			no := false
			var err error
			s, err = New(Options{MailRoot: root, MountMarker: testMarker, Hostname: host, Chown: &no, FS: filer, Now: clock, ESTALERetries: 3})
			if err != nil {
				t.Fatal(err)
			}
		}
		s.after = neverFires
		stores = append(stores, s)
	}
	return filer, fault, stores, root
}
