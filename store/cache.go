package store

import (
	"sync"
	"time"
)

// statsBox guards the index cache counters.
type statsBox struct {
	mu sync.Mutex
	c  CacheStats
}

func (b *statsBox) add(f func(*CacheStats)) {
	b.mu.Lock()
	f(&b.c)
	b.mu.Unlock()
}

// IndexStats returns the index cache counters so far.
func (s *Store) IndexStats() CacheStats {
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	return s.stats.c
}

// dirStamp identifies a directory's state: a cached listing of it is
// valid while the stamp is unchanged.
type dirStamp struct {
	ino, size    uint64
	mtime, ctime int64
	cacheable    bool
}

// indexCache keeps each Maildir's last listing on this machine, so that a
// repeat login on a large, unchanged mailbox does not look at every file.
// Every session revalidates the entry before use (see Session).
type indexCache struct {
	mu      sync.Mutex
	entries map[string]*cachedListing
	max     int
}

type cachedListing struct {
	format string
	// legacy is the frozen record of legacy UIDLs the listing was made
	// with (nil for the "maildir" format); listings made without one are
	// not cached.
	legacy     *legacyUIDLs
	new, cur   dirStamp
	newEntries []Entry
	curEntries []Entry
	// all is both merged and sorted by delivery time, handed to sessions
	// as it is on a hit: sessions only read their listing, so a repeat
	// login on a large mailbox neither copies nor sorts it.
	all []Entry
}

func newIndexCache(max int) *indexCache {
	return &indexCache{entries: make(map[string]*cachedListing), max: max}
}

func (c *indexCache) get(path string) *cachedListing {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[path]
}

func (c *indexCache) put(path string, l *cachedListing) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Drop an arbitrary entry: a miss costs one directory listing.
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[path] = l
}

func (c *indexCache) drop(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, path)
}

// CacheStats counts index cache outcomes (for metrics and tests).
type CacheStats struct {
	Hits, PartialHits, Misses, Invalidations int64
}

// stampOf stamps dir. filerNow is the file server's clock at a moment
// before the stamp is read (the session's lock file's mtime): a directory
// is cacheable only when it had not changed for two seconds then, judged
// on the server's clock, since the server sets the directory's times, in
// ticks as coarse as a second. Any later change gets a later time.
func (s *Store) stampOf(dir string, filerNow time.Time) (dirStamp, error) {
	var info Info
	err := s.retryStale(func() error { var e error; info, e = s.freshInfo(dir); return e })
	if err != nil {
		return dirStamp{}, err
	}
	age := filerNow.Sub(info.ModTime)
	return dirStamp{
		ino: info.Ino, size: uint64(info.Size),
		mtime: info.ModTime.UnixNano(), ctime: info.ChangeAt.UnixNano(),
		cacheable: age > 2*time.Second,
	}, nil
}

func (a dirStamp) same(b dirStamp) bool {
	return a.cacheable && a.ino == b.ino && a.size == b.size && a.mtime == b.mtime && a.ctime == b.ctime
}
