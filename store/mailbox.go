package store

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// GenerationName is the file every session that removes or moves messages
// rewrites, so that other machines' cached listings of the Maildir are
// known to be out of date even where directory times are coarse.
const GenerationName = "nfsdrop-pop3.gen"

// SessionOptions configures a POP3 session on a Maildir.
type SessionOptions struct {
	// LockStale is how long a session lock may go unrefreshed before
	// another session takes it over.
	LockStale time.Duration
	// MoveToCur moves retrieved messages from new/ to cur/ (flag S) at
	// QUIT. The UIDL does not change either way.
	MoveToCur bool
	// UIDLFormat is UIDLMaildir, UIDLDovecot or UIDLCourier.
	UIDLFormat string
	// Owner names the session in the lock file (user, remote address).
	Owner string
}

// Entry is one message of a session's listing.
type Entry struct {
	// Dir is "new" or "cur"; Name the file name in it.
	Dir, Name string
	// Size is the RFC 1939 size: octets with CRLF line ends.
	Size int64
	// StoredSize is the file's size (for quota), from ,S= or the file.
	StoredSize int64
	// UIDL is stable across sessions and machines.
	UIDL string
	// order sorts by delivery time: seconds, then microseconds, then name.
	sec, usec int64
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
	gen    string
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

// Session is a POP3 session's hold on a Maildir: the lock, and the listing
// made once at login. The listing never changes during the session
// (RFC 1939); deliveries go on into new/ without the lock and show up in
// the next session.
type Session struct {
	s       *Store
	mb      Mailbox
	opts    SessionOptions
	lock    *dotlock
	entries []Entry
	// moved holds entries found under a new name since the listing (an
	// IMAP server renamed them); see Open and Commit.
	moved  map[int]Entry
	cache  string // how the listing was obtained: "hit", "partial", "miss"
	closed bool
}

// OpenSession takes mb's session lock (failure.InUse when another session
// holds it) and lists the Maildir, revalidating this machine's cached
// listing first:
//
//  1. the generation file is read through open() (which makes an NFS
//     client revalidate it: close-to-open consistency);
//  2. new/ and cur/ are opened and fstat'ed, again forcing fresh
//     attributes instead of the attribute cache;
//  3. if the generation and both directories' inode, mtime, ctime and size
//     are as cached, the cached listing is used; if only new/ changed
//     (a delivery), only new/ is listed again; otherwise both are.
//
// A directory changed in the two seconds before the session's lock was
// written, on the file server's clock, is never cached: two changes within
// one timestamp tick must not look like none.
func (s *Store) OpenSession(mb Mailbox, opts SessionOptions) (_ *Session, err error) {
	// The Maildir is opened under the symlink rule and held for the whole
	// session (pin.go): the lock, the listing, RETR and DELE all name
	// their files through it, so a Maildir (or new/, cur/) swapped for a
	// link to another mailbox meanwhile is not the one used. A user who
	// never received mail has no Maildir yet (or, when its first delivery
	// is being made on another machine, cur/ and new/ without tmp/): it is
	// made, so that the lock has a home.
	mb, err = s.pinMaildir(mb, maildirSubdirs[:]...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			mb.release()
		}
	}()
	lock, err := s.acquireLock(mb, opts.LockStale, opts.Owner)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Release()
		}
	}()
	entries, how, err := s.listing(mb, opts.UIDLFormat, lock.filerNow)
	if err != nil {
		return nil, err
	}
	s.SweepInPassing(mb.Path)
	return &Session{s: s, mb: mb, opts: opts, lock: lock, entries: entries, cache: how}, nil
}

// Entries is the session's listing, sorted by delivery time. It may be
// shared with other sessions through the listing cache: read only.
func (ss *Session) Entries() []Entry { return ss.entries }

// CacheResult says how the listing was made: "hit", "partial" or "miss".
func (ss *Session) CacheResult() string { return ss.cache }

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

func (s *Store) readGeneration(maildir string) (string, error) {
	var data []byte
	err := s.retryStale(func() error {
		var e error
		data, _, e = s.readSmall(filepath.Join(maildir, GenerationName))
		return e
	})
	if err != nil {
		if isErrno(err, syscall.ENOENT) {
			return "", nil
		}
		return "", s.classify("read generation", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// bumpGeneration writes a new generation (unique name of this change)
// atomically: write in tmp/, rename over.
func (s *Store) bumpGeneration(mb Mailbox) error {
	tmp := mb.at("tmp", s.newBase()+".gen")
	if err := s.writeFile(tmp, []byte(s.newBase()+"\n"), mb); err != nil {
		return s.classify("write generation", err)
	}
	info, err := s.fs.Lstat(tmp)
	if err == nil {
		err = s.publishRename(tmp, info, mb.at(GenerationName))
	}
	if err != nil {
		s.fs.Remove(tmp)
		return s.classify("write generation", err)
	}
	return nil
}

func (s *Store) listing(mb Mailbox, format string, filerNow time.Time) ([]Entry, string, error) {
	gen, err := s.readGeneration(mb.at())
	if err != nil {
		return nil, "", err
	}
	newStamp, err := s.stampOf(mb.at("new"), filerNow)
	if err != nil {
		return nil, "", s.classify("list new", err)
	}
	curStamp, err := s.stampOf(mb.at("cur"), filerNow)
	if err != nil {
		return nil, "", s.classify("list cur", err)
	}
	cached := s.index.get(mb.Path)
	how := "miss"
	// The legacy UIDLs are loaded only when names must be listed: a
	// listing in the cache was made with the same frozen record.
	var legacy *legacyUIDLs
	frozen := true
	loadLegacy := func() error {
		if cached != nil && cached.format == format {
			// The record never changes once written: no need to read
			// it again on this machine.
			legacy = cached.legacy
			return nil
		}
		var err error
		legacy, frozen, err = s.frozenLegacyUIDLs(mb, format)
		return err
	}
	var newEntries, curEntries []Entry
	switch {
	case cached != nil && cached.gen == gen && cached.format == format && cached.cur.same(curStamp) && cached.new.same(newStamp):
		s.obs.IndexLookup("hit")
		s.stats.add(func(c *CacheStats) { c.Hits++ })
		return cached.all, "hit", nil
	case cached != nil && cached.gen == gen && cached.format == format && cached.cur.same(curStamp):
		how = "partial"
		s.stats.add(func(c *CacheStats) { c.Invalidations++ })
		curEntries = cached.curEntries
		if err := loadLegacy(); err != nil {
			return nil, "", err
		}
		if newEntries, err = s.listDir(mb, "new", legacy, cached.newEntries); err != nil {
			return nil, "", err
		}
	default:
		if cached != nil {
			s.stats.add(func(c *CacheStats) { c.Invalidations++ })
		}
		if err := loadLegacy(); err != nil {
			return nil, "", err
		}
		if newEntries, err = s.listDir(mb, "new", legacy, nil); err != nil {
			return nil, "", err
		}
		if curEntries, err = s.listDir(mb, "cur", legacy, nil); err != nil {
			return nil, "", err
		}
	}
	s.obs.IndexLookup(how)
	s.stats.add(func(c *CacheStats) {
		if how == "partial" {
			c.PartialHits++
		} else {
			c.Misses++
		}
	})
	all := make([]Entry, 0, len(newEntries)+len(curEntries))
	all = append(all, curEntries...)
	all = append(all, newEntries...)
	sort.Slice(all, func(i, j int) bool {
		a, b := &all[i], &all[j]
		if a.sec != b.sec {
			return a.sec < b.sec
		}
		if a.usec != b.usec {
			return a.usec < b.usec
		}
		return a.UIDL < b.UIDL
	})
	if !frozen {
		// Made from a legacy list that did not parse whole: the next
		// session must read it again, not reuse these UIDLs.
		s.index.drop(mb.Path)
		return all, how, nil
	}
	s.index.put(mb.Path, &cachedListing{gen: gen, format: format, legacy: legacy, new: newStamp, cur: curStamp, newEntries: newEntries, curEntries: curEntries, all: all})
	return all, how, nil
}

// listDir lists one of new/ or cur/. prev (the cached entries of the same
// directory) is reused for names still present, so sizes that had to be
// computed from a file are not computed again.
func (s *Store) listDir(mb Mailbox, sub string, legacy *legacyUIDLs, prev []Entry) ([]Entry, error) {
	dir := mb.at(sub)
	var names []string
	err := s.retryStale(func() error { var e error; names, e = s.fs.ReadDirNames(dir); return e })
	if err != nil {
		return nil, s.classify("list "+sub, err)
	}
	known := make(map[string]*Entry, len(prev))
	for i := range prev {
		known[prev[i].Name] = &prev[i]
	}
	out := make([]Entry, 0, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if e, ok := known[name]; ok {
			out = append(out, *e)
			continue
		}
		e := Entry{Dir: sub, Name: name}
		base := BaseName(name)
		e.UIDL = uidlOf(name)
		if legacy != nil {
			if u, ok := legacy.uidl[base]; ok {
				e.UIDL = u
			}
		}
		size, sizeOK, crlf, crlfOK := SizesFromName(name)
		if !crlfOK && legacy != nil {
			crlf, crlfOK = legacy.size[base]
		}
		if !sizeOK || !crlfOK {
			st, w, err := s.measure(filepath.Join(dir, name))
			if err != nil {
				if isErrno(err, syscall.ENOENT) {
					continue // removed while we listed
				}
				return nil, s.classify("measure message", err)
			}
			if !sizeOK {
				size = st
			}
			if !crlfOK {
				crlf = w
			}
		}
		e.StoredSize, e.Size = size, crlf
		e.sec, e.usec = deliveryTime(base)
		out = append(out, e)
	}
	return out, nil
}

// measure reads a message to find its size and its CRLF size (for files
// whose names do not carry ,S= and ,W=: mail written by other programs).
func (s *Store) measure(path string) (size, crlf int64, err error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var c crlfCounter
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	for {
		n, err := f.Read(*bp)
		c.add((*bp)[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return c.size, c.pop3Size(), nil
}

// deliveryTime parses "<sec>.M<usec>..." (or "<sec>.<anything>") from a
// base name; names without a leading number sort first.
func deliveryTime(base string) (sec, usec int64) {
	dot := strings.IndexByte(base, '.')
	if dot <= 0 {
		return 0, 0
	}
	sec, err := strconv.ParseInt(base[:dot], 10, 64)
	if err != nil {
		return 0, 0
	}
	rest := base[dot+1:]
	if strings.HasPrefix(rest, "M") {
		end := 1
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		usec, _ = strconv.ParseInt(rest[1:end], 10, 64)
	}
	return sec, usec
}

// Open returns the content of entry i. An IMAP server on the same Maildir
// may have renamed the message since the listing (new/ to cur/, a flag
// added): on ENOENT it is looked up again by its base name, and only when
// it is in neither new/ nor cur/ is it reported removed (failure.NotFound).
// The content, and so the size LIST showed, is the same under any name.
func (ss *Session) Open(i int) (io.ReadCloser, error) {
	if i < 0 || i >= len(ss.entries) {
		return nil, failure.New(failure.BadInput, "open message", "no such message", nil)
	}
	s := ss.s
	e := ss.current(i)
	for attempt := 0; attempt < maxRelocations; attempt++ {
		path := ss.mb.at(e.Dir, e.Name)
		var f File
		err := s.retryStale(func() error { var e error; f, e = s.fs.OpenFile(path, os.O_RDONLY, 0); return e })
		if err == nil {
			return f, nil
		}
		if !isErrno(err, syscall.ENOENT) {
			return nil, s.classify("open message", err)
		}
		var found bool
		if e, found, err = s.relocate(ss.mb, e, nil); err != nil {
			return nil, s.classify("find renamed message", err)
		}
		if !found {
			return nil, failure.New(failure.NotFound, "open message", "message was removed", nil)
		}
		ss.setCurrent(i, e)
	}
	return nil, errKeptRenaming()
}

// errKeptRenaming is the answer when a message is renamed again each time
// it is found: another program is busy with it; try again later.
func errKeptRenaming() error {
	return failure.Temp("follow renamed message", "message is being changed by another program", nil)
}

// maxRelocations bounds how often one operation follows a message that
// keeps being renamed under it.
const maxRelocations = 3

// current is entry i under the name this session last found it. The
// listing itself may be shared through the cache and is never written.
func (ss *Session) current(i int) Entry {
	if e, ok := ss.moved[i]; ok {
		return e
	}
	return ss.entries[i]
}

func (ss *Session) setCurrent(i int, e Entry) {
	if ss.moved == nil {
		ss.moved = make(map[int]Entry)
	}
	ss.moved[i] = e
}

// dirNames is a fresh reading of new/ and cur/ by base name, shared by the
// lookups of one operation (a QUIT that deletes many messages an IMAP
// client flagged reads the directories once).
type dirNames map[string]Entry

// relocate finds e again by its base name (the part of the name that no
// rename changes) in new/ and cur/, as Dovecot and Courier do. The
// directories are read afresh: opening them makes the NFS client
// revalidate, where its name cache may still hold the old name. known, if
// not nil, is filled on first use and reused; pass nil to read anew.
func (s *Store) relocate(mb Mailbox, e Entry, known *dirNames) (Entry, bool, error) {
	var names dirNames
	if known != nil {
		names = *known
	}
	if names == nil {
		names = make(dirNames)
		for _, sub := range []string{"new", "cur"} {
			var list []string
			dir := mb.at(sub)
			if err := s.retryStale(func() error { var e error; list, e = s.fs.ReadDirNames(dir); return e }); err != nil {
				return Entry{}, false, err
			}
			for _, n := range list {
				names[BaseName(n)] = Entry{Dir: sub, Name: n}
			}
		}
		if known != nil {
			*known = names
		}
	}
	found, ok := names[BaseName(e.Name)]
	if !ok || (found.Dir == e.Dir && found.Name == e.Name) {
		// Not there, or still listed under the name that just gave
		// ENOENT: the reading is older than the removal.
		return Entry{}, false, nil
	}
	if size, ok, _, _ := SizesFromName(found.Name); ok && size != e.StoredSize {
		return Entry{}, false, nil // same base, different message: not ours
	}
	e.Dir, e.Name = found.Dir, found.Name
	return e, true, nil
}

// Commit is POP3's UPDATE state: it checks the lock is still this
// session's, removes the deleted entries, moves retrieved ones to cur/
// when configured, records the removal in maildirsize, writes a new
// generation so that other machines drop their cached listing, and
// releases the lock. It removes nothing when the lock was taken over.
//
// A message renamed meanwhile (ENOENT) is looked up again by its base name
// and removed (or flagged) under its new name; one in neither new/ nor
// cur/ is gone already, which for a deletion is what was asked.
func (ss *Session) Commit(deleted, retrieved []int) error {
	if ss.closed {
		return failure.Temp("commit", "session already closed", nil)
	}
	defer ss.Close()
	s := ss.s
	if len(deleted) == 0 && (!ss.opts.MoveToCur || len(retrieved) == 0) {
		return nil
	}
	if !ss.lock.Held() {
		return failure.Temp("commit", "session lock lost; nothing deleted", nil)
	}
	var firstErr error
	var bytes, count int64
	var known dirNames
	isDeleted := make(map[int]bool, len(deleted))
	for _, i := range deleted {
		if i < 0 || i >= len(ss.entries) || isDeleted[i] {
			continue
		}
		isDeleted[i] = true
		removed, err := ss.remove(ss.current(i), &known)
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = s.classify("remove message", err)
			}
		case removed:
			bytes += ss.entries[i].StoredSize
			count++
		}
	}
	if ss.opts.MoveToCur {
		for _, i := range retrieved {
			if i < 0 || i >= len(ss.entries) || isDeleted[i] || ss.entries[i].Dir != "new" {
				continue
			}
			if err := ss.markSeen(ss.current(i), &known); err != nil {
				s.log.Warn("could not move a retrieved message to cur", "name", ss.entries[i].Name, "err", err)
			}
		}
	}
	if count > 0 {
		s.RecordRemoval(ss.mb, bytes, count)
	}
	if err := s.bumpGeneration(ss.mb); err != nil && firstErr == nil {
		firstErr = err
	}
	s.index.drop(ss.mb.Path)
	if firstErr != nil {
		return fmt.Errorf("commit: %w", firstErr)
	}
	return nil
}

// remove unlinks e, following it when it was renamed; removed is false
// when it was gone already.
func (ss *Session) remove(e Entry, known *dirNames) (removed bool, err error) {
	s := ss.s
	for attempt := 0; attempt < maxRelocations; attempt++ {
		path := ss.mb.at(e.Dir, e.Name)
		err = s.retryStale(func() error { return s.fs.Remove(path) })
		if !isErrno(err, syscall.ENOENT) {
			return err == nil, err
		}
		if attempt > 0 {
			*known = nil // our reading was already out of date once
		}
		var found bool
		if e, found, err = s.relocate(ss.mb, e, known); err != nil || !found {
			return false, err
		}
	}
	return false, errKeptRenaming()
}

// markSeen is pop3.move_to_cur for one retrieved message listed in new/:
// new/X becomes cur/X:2,S; one an IMAP server moved to cur/ meanwhile gets
// the S flag added to the ones it has there. The UIDL does not change.
func (ss *Session) markSeen(e Entry, known *dirNames) error {
	s := ss.s
	var err error
	for attempt := 0; attempt < maxRelocations; attempt++ {
		dst, ok := seenName(e)
		if !ok {
			return nil // in cur/ and seen already
		}
		src := ss.mb.at(e.Dir, e.Name)
		err = s.retryStale(func() error { return s.fs.Rename(src, ss.mb.at("cur", dst)) })
		if !isErrno(err, syscall.ENOENT) {
			return err
		}
		if attempt > 0 {
			*known = nil
		}
		var found bool
		if e, found, err = s.relocate(ss.mb, e, known); err != nil || !found {
			// Gone, or our own rename answered ENOENT on a retransmit
			// and the message is now cur/ under dst: found would then be
			// the name we gave it, which seenName leaves alone.
			return err
		}
	}
	return errKeptRenaming()
}

// seenName is the name e gets in cur/ with the S flag (Maildir info
// "2,<flags>", flags in ASCII order); ok is false when e is already in
// cur/ with it.
func seenName(e Entry) (name string, ok bool) {
	base, info, hasInfo := strings.Cut(e.Name, ":")
	if e.Dir == "new" || !hasInfo || !strings.HasPrefix(info, "2,") {
		return base + ":2,S", true
	}
	flags := []byte(info[2:])
	if slices.Contains(flags, 'S') {
		return "", false
	}
	flags = append(flags, 'S')
	slices.Sort(flags)
	return base + ":2," + string(flags), true
}

// Close releases the lock without changing the Maildir.
func (ss *Session) Close() error {
	if ss.closed {
		return nil
	}
	ss.closed = true
	// The lock names its file through the pinned Maildir: release it
	// before the pin.
	ss.lock.Release()
	ss.mb.release()
	return nil
}
