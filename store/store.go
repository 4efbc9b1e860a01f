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
	"errors"
	"fmt"
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

// DeliveryObserver is an Observer that is also told each recipient's
// outcome; the store reports to it when its Observer implements it (one
// store per volume reports a volume's deliveries).
type DeliveryObserver interface {
	Observer
	// Delivery reports one recipient's outcome (err nil: published) and
	// the time since the message began to be staged.
	Delivery(err error, d time.Duration)
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

// Store delivers into Maildirs under one mail root.
type Store struct {
	fs         FS
	root       string
	marker     string
	host       string
	quotaDefer bool
	retries    int
	chown      bool
	// euid and egid are the process's, read once: a root process
	// creates a mailbox's tmp/ files as the mailbox's owner (bornOwner),
	// and the path rule trusts the symlinks of euid besides root's
	// (confine.go); the daemons never change them.
	euid, egid int
	log        *slog.Logger
	now        func() time.Time
	pid        int
	// markerPath is the mount marker's path (mail root + marker), joined
	// once: CheckMount runs on every delivery.
	markerPath string
	counter    atomic.Uint32
	dirs       *dirSyncer
	// syncFree caches FS.DirOpsSynchronous per device (uint64 → bool).
	syncFree sync.Map
	bufs     sync.Pool
	index    *indexCache
	stats    statsBox
	obs      Observer
	dobs     DeliveryObserver   // obs, when it implements it; else nil
	sweeper  *backgroundSweeper // nil unless StartSweeper ran
	// after is the session lock refresher's timer (time.After); tests
	// replace it to drive the refresher without waiting.
	after    func(time.Duration) <-chan time.Time
	recounts recountLimiter // quota recounts made to decide a refusal
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
	s.euid, s.egid = os.Geteuid(), os.Getegid()
	if opts.Chown != nil {
		s.chown = *opts.Chown
	} else {
		s.chown = os.Geteuid() == 0
	}
	if s.marker != "" {
		s.markerPath = filepath.Join(s.root, s.marker)
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
	s.dobs, _ = s.obs.(DeliveryObserver)
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
	p := s.markerPath
	err := s.retryStale(func() error { _, err := s.fs.Lstat(p); return err })
	if err == nil {
		return nil
	}
	err = fmt.Errorf("marker %s: %w", p, err)
	if errors.As(err, new(*failure.Error)) {
		// The lookup was refused (the volume's filer is not answering):
		// classify keeps that answer, not "not mounted", which would send
		// an administrator to check the mounts of a filer that is only
		// hung.
		return s.classify("mount guard", err)
	}
	return failure.Temp("mount guard", "mail store not mounted", err)
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
