package store

import (
	"fmt"
	"sync"
)

// dirSyncer shares directory fsyncs between concurrent deliveries into the
// same directory (group commit). A delivery that has linked its file into
// new/ needs *some* fsync of new/ that started after its link; when one is
// already running, it waits for the next one, which then covers every
// delivery that arrived meanwhile. Durability is unchanged: nobody is
// answered before an fsync that began after their link has returned, and
// each delivery gets the result of exactly that fsync — not of a later one,
// since after a failed fsync a later one may succeed without the earlier
// entries being on disk (the kernel reports a writeback error once).
type dirSyncer struct {
	mu    sync.Mutex
	dirs  map[string]*dirSync
	sync_ func(dir string) error
}

type dirSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	// next is the round that newcomers join: the fsync that will start
	// after the running one (nil until someone joins).
	next  *syncRound
	users int // callers holding this entry, for removal from the map
}

// syncRound is one fsync and the deliveries it covers.
type syncRound struct {
	finished bool
	err      error
	waiters  int // for tests: deliveries that joined this round
}

func newDirSyncer(syncFn func(string) error) *dirSyncer {
	return &dirSyncer{dirs: make(map[string]*dirSync), sync_: syncFn}
}

// Sync returns once an fsync of the directory key names, started after
// the call, has finished, with that fsync's result (the result of the
// round it joined, never of a later one). key identifies the directory
// (see syncDir); dir is how this caller reaches it (through its pinned
// descriptor), used when this caller is the one to run the round's fsync.
func (g *dirSyncer) Sync(key, dir string) error {
	g.mu.Lock()
	d := g.dirs[key]
	if d == nil {
		d = &dirSync{}
		d.cond = sync.NewCond(&d.mu)
		g.dirs[key] = d
	}
	d.users++
	g.mu.Unlock()

	err := d.wait(func() error { return g.sync_(dir) })

	g.mu.Lock()
	d.users--
	if d.users == 0 {
		delete(g.dirs, key)
	}
	g.mu.Unlock()
	return err
}

func (d *dirSync) wait(fsync func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A running fsync may have started before our link: join the round
	// that starts after it.
	if d.next == nil {
		d.next = &syncRound{}
	}
	r := d.next
	r.waiters++
	for !r.finished {
		if d.running {
			d.cond.Wait()
			continue
		}
		// Nothing running and our round not done: it has not started
		// yet (the round before it finished), so run it for everyone in
		// it. Later callers join a fresh round.
		d.running = true
		d.next = nil
		d.mu.Unlock()
		err := fsync()
		d.mu.Lock()
		d.running = false
		r.finished, r.err = true, err
		d.cond.Broadcast()
	}
	return r.err
}

// syncDir fsyncs the directory sub of the pinned mb ("" for the Maildir
// itself) through the group commit. Deliveries share a round only when
// they hold the very same directory: the key is the pinned descriptor's
// device and inode, not the path, so a Maildir replaced under one delivery
// (renamed away and made again) is never covered by an fsync of the other
// directory of that name. Without a pin, or when fstat fails, the key is
// the name this caller uses, which shares nothing it should not. The
// identity costs no NFS call (Dir.ID).
//
// On a filesystem whose directory operations are synchronous (NFS:
// FS.DirOpsSynchronous) the entry is already durable when the LINK or
// RENAME has answered, and nothing is done: the fsync would be a no-op
// behind an open that costs the filer a GETATTR.
func (s *Store) syncDir(mb Mailbox, sub string) error {
	key, dev, ok := syncKey(mb, sub)
	if ok && s.dirOpsSynchronous(dev, mb.at(sub)) {
		return nil
	}
	return s.dirs.Sync(key, mb.at(sub))
}

// syncKey is the group-commit key of the directory sub of mb, and its
// device when it is pinned (ok).
func syncKey(mb Mailbox, sub string) (key string, dev uint64, ok bool) {
	if d := mb.pinnedDir(sub); d != nil {
		if info, err := d.ID(); err == nil {
			return fmt.Sprintf("dev %d ino %d", info.Dev, info.Ino), info.Dev, true
		}
	}
	return mb.at(sub), 0, false
}

// dirOpsSynchronous is FS.DirOpsSynchronous for the device dev (of the
// directory dir), asked once per device; an error answers false (fsync as
// usual) and is asked again next time.
func (s *Store) dirOpsSynchronous(dev uint64, dir string) bool {
	if v, ok := s.syncFree.Load(dev); ok {
		return v.(bool)
	}
	sync, err := s.fs.DirOpsSynchronous(dir)
	if err != nil {
		return false
	}
	s.syncFree.Store(dev, sync)
	return sync
}
