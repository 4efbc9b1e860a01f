// Package store is the Maildir on NFS: delivery, quota, the tmp/ sweeper,
// and (for POP3) mailbox snapshots and session locks.
//
// Delivery follows DJB's Maildir algorithm hardened for NFS the way Postfix
// (virtual/maildir.c, util/sane_link.c), qmail and Dovecot do it:
//
//  1. refuse to create anything when the mail root's mount marker is
//     missing (an unmounted NFS export must not fill with new maildirs);
//  2. create tmp/<unique> with O_CREAT|O_EXCL, write, fsync, close — and
//     check every return, because NFS reports write errors at fsync/close;
//  3. publish with link() into new/ (rename() on filesystems without hard
//     links); LINK and RENAME are not idempotent over NFS, so after EEXIST
//     or ENOENT we look at the target and call it success only when it is
//     our inode;
//  4. fsync new/ (shared between concurrent deliveries), then report
//     success; 5. unlink tmp/.
//
// Any failure unlinks what was written to tmp/ and returns a
// *failure.Error. The store never answers a protocol: callers map errors.
package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Options configures a Store.
type Options struct {
	// MailRoot is the absolute directory every Maildir lies under.
	MailRoot string
	// MountMarker is a file name under MailRoot that must exist before the
	// store creates anything (proof that the NFS export is mounted); ""
	// disables the guard.
	MountMarker string
	// Hostname gives the host part of unique names; "" means os.Hostname().
	// It must differ between machines sharing a store.
	Hostname string
	// QuotaDefer makes over-quota a temporary failure (452 4.2.2) instead
	// of a permanent one (552 5.2.2).
	QuotaDefer bool
	// ESTALERetries bounds how often an operation that got ESTALE is
	// repeated by path (the path lookup gets a fresh file handle).
	ESTALERetries int
	// Chown makes new maildirs and files owned by the mailbox's UID/GID.
	// nil means "when running as root".
	Chown *bool
	// FS is the filesystem; nil means the real one.
	FS FS
	// Logger receives warnings that do not fail a delivery (quota file
	// trouble, a tmp file that could not be removed). nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// IndexCacheSize bounds how many Maildir listings this process keeps
	// for POP3 (0: 10000).
	IndexCacheSize int
	// Observer receives measurements for metrics; nil discards them.
	Observer Observer
}

// Observer receives the store's measurements (the metrics package
// implements it; store does not import Prometheus).
type Observer interface {
	// Fsync reports an fsync of a message file ("file") or of new/ ("dir").
	Fsync(kind string, d time.Duration)
	// FSError reports a filesystem error the store classified.
	FSError(errno syscall.Errno)
	// Stored reports a message published for one recipient.
	Stored(bytes int64)
	// LockTakeover reports a stale POP3 session lock taken over.
	LockTakeover()
	// IndexLookup reports how a POP3 listing was made: hit, partial, miss.
	IndexLookup(result string)
	// TmpSwept reports abandoned tmp/ files removed.
	TmpSwept(n int)
}

type nopObserver struct{}

func (nopObserver) Fsync(string, time.Duration) {}
func (nopObserver) FSError(syscall.Errno)       {}
func (nopObserver) Stored(int64)                {}
func (nopObserver) LockTakeover()               {}
func (nopObserver) IndexLookup(string)          {}
func (nopObserver) TmpSwept(int)                {}

// Quota is a Maildir++ quota; a zero field is unlimited.
type Quota struct {
	Bytes    int64
	Messages int64
}

// Mailbox is one user's Maildir as the store needs to know it.
type Mailbox struct {
	// Path is the absolute Maildir directory (confined by the userdb).
	Path string
	// UID and GID own what the store creates when chowning; -1 leaves it.
	UID, GID int
	Quota    Quota
	// pin, when set, holds the Maildir as verified at use time; names
	// inside it are made with at (pin.go).
	pin *maildirPin
}

// Delivery describes a message published into a Maildir's new/.
type Delivery struct {
	// Key is the file name in new/: the message's Maildir key.
	Key string
	// Size is the stored size; CRLFSize the size with CRLF line ends.
	Size, CRLFSize int64
	// Linked is true when the file is a hard link of the staged copy.
	Linked bool
}

// Store delivers into Maildirs under one mail root.
type Store struct {
	fs         FS
	root       string
	marker     string
	host       string
	quotaDefer bool
	retries    int
	chown      bool
	log        *slog.Logger
	now        func() time.Time
	pid        int
	counter    atomic.Uint32
	dirs       *dirSyncer
	bufs       sync.Pool
	index      *indexCache
	stats      statsBox
	obs        Observer
	sweeper    *backgroundSweeper // nil unless StartSweeper ran
	// after is the session lock refresher's timer (time.After); tests
	// replace it to drive the refresher without waiting.
	after    func(time.Duration) <-chan time.Time
	recounts recountLimiter // quota recounts made to decide a refusal
}

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

// New validates opts and returns a Store.
func New(opts Options) (*Store, error) {
	if !filepath.IsAbs(opts.MailRoot) {
		return nil, fmt.Errorf("store: mail root %q is not an absolute path", opts.MailRoot)
	}
	if opts.MountMarker != "" && (filepath.IsAbs(opts.MountMarker) || strings.Contains(opts.MountMarker, "..")) {
		return nil, fmt.Errorf("store: mount marker %q must be a name under the mail root", opts.MountMarker)
	}
	host := opts.Hostname
	if host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("store: hostname: %w", err)
		}
		host = h
	}
	s := &Store{
		fs:         opts.FS,
		root:       filepath.Clean(opts.MailRoot),
		marker:     opts.MountMarker,
		host:       HostPart(host),
		quotaDefer: opts.QuotaDefer,
		retries:    opts.ESTALERetries,
		log:        opts.Logger,
		now:        opts.Now,
		pid:        os.Getpid(),
		after:      time.After,
	}
	if s.fs == nil {
		s.fs = OSFS{}
	}
	if err := checkProcFD(s.fs); err != nil {
		return nil, err
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if opts.Chown != nil {
		s.chown = *opts.Chown
	} else {
		s.chown = os.Geteuid() == 0
	}
	s.dirs = newDirSyncer(func(dir string) error {
		start := time.Now()
		err := s.retryStale(func() error { return s.fs.SyncDir(dir) })
		s.obs.Fsync("dir", time.Since(start))
		return err
	})
	s.bufs.New = func() any { b := make([]byte, 64<<10); return &b }
	s.obs = opts.Observer
	if s.obs == nil {
		s.obs = nopObserver{}
	}
	if opts.IndexCacheSize <= 0 {
		opts.IndexCacheSize = 10000
	}
	s.index = newIndexCache(opts.IndexCacheSize)
	return s, nil
}

// Root is the mail root.
func (s *Store) Root() string { return s.root }

// HostPart is the host part this store puts in unique names.
func (s *Store) HostPart() string { return s.host }

// CheckMount fails (temporarily) when the mount marker is missing, so mail
// waits in Postfix's queue instead of landing on an empty mount point.
func (s *Store) CheckMount() error {
	if s.marker == "" {
		return nil
	}
	p := filepath.Join(s.root, s.marker)
	err := s.retryStale(func() error { _, err := s.fs.Lstat(p); return err })
	if err != nil {
		return failure.Temp("mount guard", "mail store not mounted", fmt.Errorf("marker %s: %w", p, err))
	}
	return nil
}

// retryStale runs op again while it fails with ESTALE, at most s.retries
// more times. Every op passed here works by path, so the retry looks the
// path up again and gets a fresh file handle.
func (s *Store) retryStale(op func() error) error {
	err := op()
	for i := 0; i < s.retries && isErrno(err, syscall.ESTALE); i++ {
		err = op()
	}
	return err
}

// inRoot reports whether p is the mail root or lies under it.
func (s *Store) inRoot(p string) bool {
	return p == s.root || strings.HasPrefix(p, s.root+string(filepath.Separator))
}

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

// Staged is a message written durably once into a tmp/ directory, ready to
// be published into one or more Maildirs. Discard must be called when done.
// A Staged is used by one goroutine at a time.
type Staged struct {
	s *Store
	// place is where the staged file was written (a recipient's tmp/ or
	// the spool) and who was meant to own it; Restage writes there too.
	place tmpPlace
	// src is the file recipients are linked from: the tmp/ file, or, after
	// a rename fallback consumed it, the published file in new/.
	src     string
	srcInfo Info
	inTmp   bool // src is still in tmp/ and must be removed by Discard
	// noLinks is set once the filesystem refused a hard link (EPERM), so
	// later recipients get copies without trying again.
	noLinks        bool
	base           string
	size, crlfSize int64
	// uid and gid own the file when owned is true. A spool file whose
	// chown failed is owned by nobody in particular: with chowning on,
	// every recipient then gets its own copy.
	uid, gid int
	owned    bool
	// links is how many links to src this Staged has made (and not taken
	// back): src's link count is srcInfo.Nlink + links, since nobody else
	// knows the file's name. ackedLinks is how many of them were answered
	// as delivered.
	links, ackedLinks uint64
	// published maps a cleaned Maildir path to the delivery already made
	// there from this message without a prefix: a second recipient with the
	// same Maildir (user+a and user+b, aliases) gets the same answer instead
	// of a second link, a second quota charge, or a withdrawal of a file the
	// first was answered for.
	published map[string]Delivery
	// extra are recipients' pins src came to depend on (the rename
	// fallback publishes the staged file itself through one). Discard
	// releases them with place.pin.
	extra []*maildirPin
}

// Size is the staged message's size in bytes.
func (st *Staged) Size() int64 { return st.size }

// Stage writes r durably into mb's tmp/ (creating the Maildir if needed).
// The returned Staged holds the file; nothing is visible in new/ yet. An
// error from r (a client gone mid-DATA, a size limit) fails the stage and
// removes the file; a *failure.Error from r is passed through as it is.
func (s *Store) Stage(mb Mailbox, r io.Reader) (*Staged, error) {
	if err := s.CheckMount(); err != nil {
		return nil, err
	}
	pinned, err := s.pinMaildir(mb, "tmp", "new")
	if err != nil {
		return nil, err
	}
	defer pinned.release()
	return s.writeTmp(mailboxTmp(pinned), r)
}

// StageFor writes r durably once for recipients (at least one), where no
// single recipient's trouble can fail the others: with one recipient in
// its own tmp/ (as Stage; its trouble is its own), with several in the
// spool under the mail root, which belongs to none of them (a Maildir path
// that is a file, a filer quota for one user, an I/O error in one
// directory then answer only for that recipient, at Deliver). With
// chowning on, the spool file is given to the first recipient's owner
// after it is written, so that recipients with that owner get hard links;
// when that chown fails (the filer's quota for that owner), the file stays
// unowned and every recipient gets a copy in its own tmp/.
func (s *Store) StageFor(recipients []Mailbox, r io.Reader) (*Staged, error) {
	switch len(recipients) {
	case 0:
		return nil, errors.New("store: StageFor without recipients")
	case 1:
		return s.Stage(recipients[0], r)
	}
	if err := s.CheckMount(); err != nil {
		return nil, err
	}
	first := recipients[0]
	spool, err := s.pinSpool()
	if err != nil {
		return nil, err
	}
	defer spool.release()
	st, err := s.writeTmp(tmpPlace{
		pin: spool, dir: spool.subs["tmp"].Path(), name: filepath.Join(s.spoolDir(), "tmp"),
		uid: first.UID, gid: first.GID, spool: true,
	}, r)
	if err != nil {
		return nil, err
	}
	s.SweepInPassing(s.spoolDir())
	return st, nil
}

func (s *Store) newBase() string {
	return uniqueBase(s.now(), s.pid, s.counter.Add(1), s.host)
}

// tmpPlace is where writeTmp makes its file and who is to own it.
type tmpPlace struct {
	// pin holds the tmp/ directory open (pin.go); each Staged written
	// there holds a reference to it until Discard.
	pin *maildirPin
	// dir names the tmp/ directory through pin, for the FS methods; name
	// is its path, for messages.
	dir, name string
	// maildir is the cleaned path of the Maildir this tmp/ belongs to;
	// "" for the spool.
	maildir  string
	uid, gid int // owner when chowning; -1 leaves it
	// spool marks the shared spool: its owner is a preference (for hard
	// links), not a requirement.
	spool bool
}

// mailboxTmp is the tmp/ of mb (pinned with tmp), owned by mb's owner.
func mailboxTmp(mb Mailbox) tmpPlace {
	return tmpPlace{
		pin: mb.pin, dir: mb.at("tmp"), name: filepath.Join(mb.Path, "tmp"),
		maildir: filepath.Clean(mb.Path), uid: mb.UID, gid: mb.GID,
	}
}

// writeTmp is step 2 of the algorithm: O_EXCL create in place's tmp/,
// write, fsync, checked close. On any error the tmp file is removed.
func (s *Store) writeTmp(place tmpPlace, r io.Reader) (st *Staged, err error) {
	f, base, tmpPath, err := s.createTmp(place)
	if err != nil {
		return nil, s.classify("create tmp file", err)
	}
	closed := false
	defer func() {
		if err == nil {
			return
		}
		if !closed {
			f.Close()
		}
		if rerr := s.fs.Remove(tmpPath); rerr != nil && !isErrno(rerr, syscall.ENOENT) {
			s.log.Warn("could not remove tmp file after a failed delivery", "path", filepath.Join(place.name, base), "err", rerr)
		}
	}()
	wantOwner := s.chown && (place.uid >= 0 || place.gid >= 0)
	if wantOwner && !place.spool {
		if err = f.Chown(place.uid, place.gid); err != nil {
			return nil, s.classify("chown tmp file", err)
		}
	}
	var cnt crlfCounter
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			cnt.add(buf[:n])
			if _, werr := f.Write(buf[:n]); werr != nil {
				return nil, s.classify("write", werr)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			var fe *failure.Error
			if errors.As(rerr, &fe) {
				return nil, rerr
			}
			return nil, failure.Temp("read message", "message not received completely", rerr)
		}
	}
	owned := true
	if wantOwner && place.spool {
		// Chown only now that the data is written: a filer quota counts
		// the file against its owner, and a write charged to the first
		// recipient would let that recipient's quota fail everyone. The
		// fsync below makes the new owner durable with the data.
		if cerr := f.Chown(place.uid, place.gid); cerr != nil {
			owned = false
			s.log.Warn("could not give the spooled message to the first recipient's owner; every recipient gets a copy",
				"path", filepath.Join(place.name, base), "uid", place.uid, "gid", place.gid, "err", cerr)
		}
	}
	info, err := f.Stat()
	if err != nil {
		return nil, s.classify("fstat", err)
	}
	syncStart := time.Now()
	err = f.Sync()
	s.obs.Fsync("file", time.Since(syncStart))
	if err != nil {
		return nil, s.classify("fsync", err)
	}
	closed = true
	if err = f.Close(); err != nil {
		return nil, s.classify("close", err)
	}
	place.pin.retain()
	return &Staged{
		s: s, place: place, src: tmpPath, srcInfo: info, inTmp: true,
		base: base, size: cnt.size, crlfSize: cnt.pop3Size(),
		uid: place.uid, gid: place.gid, owned: owned,
	}, nil
}

// createTmp creates a fresh file in place.dir with O_EXCL.
func (s *Store) createTmp(place tmpPlace) (f File, base, tmpPath string, err error) {
	for attempt := 0; ; attempt++ {
		base = s.newBase()
		tmpPath = filepath.Join(place.dir, base)
		err = s.retryStale(func() error {
			var oerr error
			f, oerr = s.fs.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			return oerr
		})
		// EEXIST: another process holds this name (clock stepped back
		// and pid reused); take a fresh name.
		if isErrno(err, syscall.EEXIST) && attempt < 3 {
			continue
		}
		return f, base, tmpPath, err
	}
}

// Deliver publishes the staged message into mb's new/ and returns once it
// is durable there. Each call is independent: a failure for one mailbox
// (over quota, bad path) leaves the staged copy usable for the others.
func (st *Staged) Deliver(mb Mailbox) (Delivery, error) {
	return st.deliver(mb, nil)
}

// DeliverWithPrefix publishes a copy of the staged message with prefix
// (per-recipient header lines) written before it. It costs a second write
// of the message, so callers use it only when a recipient's copy must
// differ from the others'.
func (st *Staged) DeliverWithPrefix(mb Mailbox, prefix []byte) (Delivery, error) {
	return st.deliver(mb, prefix)
}

func (st *Staged) deliver(mb Mailbox, prefix []byte) (Delivery, error) {
	s := st.s
	maildir := filepath.Clean(mb.Path)
	if d, ok := st.published[maildir]; ok && prefix == nil {
		// Another recipient of this message has the same Maildir and was
		// answered for this very file: it is already durable there.
		return d, nil
	}
	mb, err := st.pinRecipient(mb)
	if err != nil {
		return Delivery{}, err
	}
	defer mb.release()
	if err := s.CheckQuota(mb, st.size+int64(len(prefix))); err != nil {
		return Delivery{}, err
	}
	newDir := mb.at("new")
	var (
		d   Delivery
		dst string
		// mayWithdraw is false when dst may be a name another recipient
		// of this message was already answered for (a link that answered
		// EEXIST for our inode, reached through another path to the same
		// Maildir): such a file is never taken back.
		mayWithdraw = true
		// ourLink is true when dst is a link of src counted in st.links.
		ourLink bool
	)
	sameOwner := !s.chown || (st.owned && st.uid == mb.UID && st.gid == mb.GID)
	if prefix == nil && sameOwner && !st.noLinks {
		d = Delivery{Key: fullName(st.base, st.size, st.crlfSize), Size: st.size, CRLFSize: st.crlfSize}
		dst = filepath.Join(newDir, d.Key)
		existed, err := s.publishLink(st.src, st.srcInfo, st.srcInfo.Nlink+st.links, dst)
		switch {
		case err == nil:
			d.Linked, ourLink = true, true
			st.links++
			mayWithdraw = !existed || st.ackedLinks == 0
		case isErrno(err, syscall.EXDEV):
			// Another filesystem: copy below.
		case isErrno(err, syscall.EPERM) && st.inTmp:
			// A filesystem without hard links: rename the staged file
			// into place; later recipients copy from there.
			st.noLinks = true
			if err := s.publishRename(st.src, st.srcInfo, dst); err != nil {
				return Delivery{}, s.classify("rename into new", err)
			}
			// src now names a file through mb's pin: keep it open.
			st.src, st.inTmp = dst, false
			st.extra = append(st.extra, mb.pin.retain())
			d.Linked = true
		default:
			return Delivery{}, s.classify("link into new", err)
		}
	}
	if !d.Linked {
		var err error
		if d, err = st.publishCopy(mb, prefix); err != nil {
			return Delivery{}, err
		}
		dst = filepath.Join(newDir, d.Key)
	}
	if err := s.syncDir(mb, "new"); err != nil {
		// The entry may not be durable, so the caller must not
		// acknowledge, and Postfix will deliver again under a new name.
		// Take our entry back out so that retry does not double it.
		st.withdraw(dst, filepath.Join(mb.Path, "new", d.Key), mayWithdraw, ourLink)
		return Delivery{}, s.classify("fsync new", err)
	}
	if ourLink {
		st.ackedLinks++
	}
	if prefix == nil {
		if st.published == nil {
			st.published = make(map[string]Delivery)
		}
		st.published[maildir] = d
	}
	s.addQuota(mb, d.Size)
	s.obs.Stored(d.Size)
	s.SweepInPassing(mb.Path)
	return d, nil
}

// withdraw removes dst (named for messages dstName) after its directory
// fsync failed, unless it may be a file another recipient was answered
// for (allowed false).
func (st *Staged) withdraw(dst, dstName string, allowed, ourLink bool) {
	s := st.s
	if !allowed {
		s.log.Warn("not withdrawing a message whose directory fsync failed: another recipient has the same file", "path", dstName)
		return
	}
	if dst == st.src && !st.inTmp {
		// The staged file itself was renamed here (no hard links): move
		// it back, since the other recipients copy from it.
		back := filepath.Join(st.place.dir, st.base)
		if err := s.fs.Rename(dst, back); err == nil {
			st.src, st.inTmp = back, true
			return
		}
	}
	err := s.fs.Remove(dst)
	if err != nil && !isErrno(err, syscall.ENOENT) {
		s.log.Warn("could not withdraw a message whose directory fsync failed", "path", dstName, "err", err)
		return
	}
	if ourLink {
		st.links--
	}
}

// Restage writes, once, a new staged copy of the message with prefix
// before it, where the message itself was staged (the only recipient's
// tmp/, or the spool, with the same owner rule): for a header every
// recipient shares (a virus scan verdict), so that the copy is written
// once and hard-linked to each recipient like the original. The caller
// discards both.
func (st *Staged) Restage(prefix []byte) (*Staged, error) {
	s := st.s
	f, err := s.fs.OpenFile(st.src, os.O_RDONLY, 0)
	if err != nil {
		return nil, s.classify("open staged message", err)
	}
	defer f.Close()
	return s.writeTmp(st.place, io.MultiReader(bytes.NewReader(prefix), f))
}

// publishCopy writes a fresh copy of the staged message (after prefix)
// into mb's tmp/ and publishes it into new/ (used across filesystems or
// owners, and for per-recipient headers).
func (st *Staged) publishCopy(mb Mailbox, prefix []byte) (Delivery, error) {
	s := st.s
	f, err := s.fs.OpenFile(st.src, os.O_RDONLY, 0)
	if err != nil {
		return Delivery{}, s.classify("open staged message", err)
	}
	cp, err := s.writeTmp(mailboxTmp(mb), io.MultiReader(bytes.NewReader(prefix), f))
	f.Close()
	if err != nil {
		return Delivery{}, err
	}
	defer cp.Discard()
	d := Delivery{Key: fullName(cp.base, cp.size, cp.crlfSize), Size: cp.size, CRLFSize: cp.crlfSize}
	dst := mb.at("new", d.Key)
	_, err = s.publishLink(cp.src, cp.srcInfo, cp.srcInfo.Nlink, dst)
	if isErrno(err, syscall.EPERM) {
		if err = s.publishRename(cp.src, cp.srcInfo, dst); err == nil {
			cp.inTmp = false
		}
	}
	return d, s.classify("publish copy", err)
}

// publishLink links src to dst. Over NFS a LINK whose reply was lost is
// retransmitted and the retransmission answers EEXIST (or ENOENT) although
// the first one worked, so on those errors dst is checked: if it is our
// inode, the link succeeded (existed reports that it answered so).
// Anything else at dst is a name collision, reported as a temporary
// failure (Postfix retries under a new name). nlink is src's link count
// before this link, as the caller knows it.
func (s *Store) publishLink(src string, srcInfo Info, nlink uint64, dst string) (existed bool, err error) {
	err = s.retryStale(func() error { return s.fs.Link(src, dst) })
	if err == nil || !(isErrno(err, syscall.EEXIST) || isErrno(err, syscall.ENOENT)) {
		return false, err
	}
	if s.verifyPublished(src, srcInfo, nlink, dst, true) {
		s.log.Debug("link answered an error but had succeeded (lost NFS reply)", "err", err, "path", dst)
		return true, nil
	}
	return false, err
}

// publishRename renames src to dst, with the same verification: a
// retransmitted RENAME answers ENOENT because src is already gone.
func (s *Store) publishRename(src string, srcInfo Info, dst string) error {
	err := s.retryStale(func() error { return s.fs.Rename(src, dst) })
	if err == nil || !(isErrno(err, syscall.ENOENT) || isErrno(err, syscall.EEXIST)) {
		return err
	}
	if s.verifyPublished(src, srcInfo, 0, dst, false) {
		s.log.Debug("rename answered an error but had succeeded (lost NFS reply)", "err", err, "path", dst)
		return nil
	}
	return err
}

// verifyPublished decides whether dst holds our inode: same dev/ino, or —
// for a link, when dst cannot be stat'ed through a stale attribute cache —
// a link count on src above nlink, the count it had before this link.
// Only the caller can know nlink: the staged file's name is known to
// nobody else, so its count is what it was written with plus the links
// this message already made; comparing with the count at write time would
// take other recipients' links for this one.
func (s *Store) verifyPublished(src string, srcInfo Info, nlink uint64, dst string, link bool) bool {
	var info Info
	err := s.retryStale(func() error { var e error; info, e = s.fs.Lstat(dst); return e })
	if err == nil {
		return info.SameFile(srcInfo)
	}
	if link {
		if si, serr := s.fs.Lstat(src); serr == nil && si.SameFile(srcInfo) && si.Nlink > nlink {
			return true
		}
	}
	return false
}

// Discard removes the staged tmp/ file. Call it once every recipient has
// been delivered (or has failed). An error is logged, not returned: the
// message is already safe in new/ and the sweeper removes leftovers.
func (st *Staged) Discard() {
	defer st.releasePins()
	if !st.inTmp {
		return
	}
	st.inTmp = false
	err := st.s.retryStale(func() error { return st.s.fs.Remove(st.src) })
	if err != nil && !isErrno(err, syscall.ENOENT) {
		st.s.log.Warn("could not remove staged tmp file; the sweeper will", "path", filepath.Join(st.place.name, st.base), "err", err)
	}
}

// Deliver is Stage + Deliver + Discard for a single mailbox.
func (s *Store) Deliver(mb Mailbox, r io.Reader) (Delivery, error) {
	st, err := s.Stage(mb, r)
	if err != nil {
		return Delivery{}, err
	}
	defer st.Discard()
	return st.Deliver(mb)
}
