package store

import "sync"

// dirSyncer shares directory fsyncs between concurrent deliveries into the
// same directory (group commit). A delivery that has linked its file into
// new/ needs *some* fsync of new/ that started after its link; when one is
// already running, it waits for the next one, which then covers every
// delivery that arrived meanwhile. Durability is unchanged: nobody is
// answered before an fsync that began after their link has returned.
type dirSyncer struct {
	mu    sync.Mutex
	dirs  map[string]*dirSync
	sync_ func(dir string) error
}

type dirSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // number of fsyncs started
	done    uint64 // number of fsyncs finished
	lastErr error  // result of fsync number done
	users   int    // callers holding this entry, for removal from the map
}

func newDirSyncer(syncFn func(string) error) *dirSyncer {
	return &dirSyncer{dirs: make(map[string]*dirSync), sync_: syncFn}
}

// Sync returns once an fsync of the directory key names, started after
// the call, has finished, with that fsync's result. key is the
// directory's path; dir is how this caller reaches it (through its pinned
// descriptor), used when this caller is the one to run the fsync.
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
	// An fsync running now may have started before our link: we need
	// one whose number is greater than the number started so far.
	ticket := d.started + 1
	for d.done < ticket {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		n := d.started
		d.mu.Unlock()
		err := fsync()
		d.mu.Lock()
		d.running = false
		d.done = n
		d.lastErr = err
		d.cond.Broadcast()
	}
	// Any fsync numbered ≥ ticket covers us; the latest one's result is
	// the state of the directory now.
	return d.lastErr
}
