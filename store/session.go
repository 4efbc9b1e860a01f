package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-maildir"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

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
//  1. new/ and cur/ are opened and fstat'ed, which makes an NFS client
//     ask the server for fresh attributes (close-to-open consistency)
//     instead of its attribute cache;
//  2. if both directories' inode, mtime, ctime and size are as cached,
//     the cached listing is used; if only new/ changed (a delivery), only
//     new/ is listed again; otherwise both are.
//
// A directory changed in the two seconds before the session's lock was
// made, on the file server's clock, is never cached: two changes within
// one timestamp tick must not look like none. Every later change (a
// delivery, a deletion, a rename by this or another machine or an IMAP
// server) then stamps the directory with a later time. No generation file
// is needed (TestListingCacheNeedsNoGenerationFile).
func (s *Store) OpenSession(mb Mailbox, opts SessionOptions) (_ *Session, err error) {
	// The Maildir is opened under the symlink rule and held for the whole
	// session (pin.go): the lock, the listing, RETR and DELE all name
	// their files through it, so a Maildir (or new/, cur/) swapped for a
	// link to another mailbox meanwhile is not the one used. A user who
	// never received mail has no Maildir yet (or, when its first delivery
	// is being made on another machine, cur/ and new/ without tmp/): it is
	// made, so that the lock has a home.
	mb, err = s.pinMaildir(mb, maildirSubdirs[:]...)
	if errors.Is(err, errBeingMoved) {
		// POP3's [IN-USE]: the switch of a move is short.
		return nil, failure.New(failure.InUse, "maildir", "mailbox is being moved", err)
	}
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
// when configured, records the removal in maildirsize, and releases the
// lock. It removes nothing when the lock was taken over.
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
	// Every removal or rename changed new/ or cur/, and with it the
	// directory's mtime and ctime on the filer: other machines' cached
	// listings are revalidated by those (listing.go).
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
	base, _, _ := strings.Cut(e.Name, ":")
	flags, hasInfo := InfoFlags(e.Name)
	if e.Dir == "new" || !hasInfo {
		return base + formatInfo([]maildir.Flag{maildir.FlagSeen}), true
	}
	if slices.Contains(flags, maildir.FlagSeen) {
		return "", false
	}
	flags = append(flags, maildir.FlagSeen)
	slices.Sort(flags)
	return base + formatInfo(flags), true
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
