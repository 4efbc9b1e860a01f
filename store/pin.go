package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// maildirSubdirs is the order in which a Maildir's directories are made:
// tmp/ last, because OpenSession takes an existing tmp/ for a complete
// Maildir whose first delivery may still be under way on another machine.
var maildirSubdirs = [...]string{"cur", "new", "tmp"}

// maildirPin holds a Maildir (or the spool) and some of its tmp/, new/,
// cur/ open, as verified at use time (see confine.go). Mailbox.at names
// files through it. It is counted: whoever keeps a name made through it
// (a session, a Staged whose file lies in its tmp/, a restaged copy)
// holds a reference, and the descriptors are closed with the last one, so
// that no name is used after its descriptor number was reused.
type maildirPin struct {
	dir  Dir
	subs map[string]Dir
	refs atomic.Int32
}

func newPin(dir Dir) *maildirPin {
	p := &maildirPin{dir: dir, subs: make(map[string]Dir, len(maildirSubdirs))}
	p.refs.Store(1)
	return p
}

// retain takes another reference to p (nil stays nil).
func (p *maildirPin) retain() *maildirPin {
	if p != nil {
		p.refs.Add(1)
	}
	return p
}

func (p *maildirPin) release() {
	if p == nil || p.refs.Add(-1) > 0 {
		return
	}
	for _, d := range p.subs {
		d.Close()
	}
	p.dir.Close()
}

// pinnedDir is the descriptor mb.at(sub) names ("" for the Maildir
// itself), or nil when mb is not pinned with it.
func (mb Mailbox) pinnedDir(sub string) Dir {
	switch {
	case mb.pin == nil:
		return nil
	case sub == "":
		return mb.pin.dir
	}
	return mb.pin.subs[sub]
}

// at names elem (a path inside the Maildir: "tmp/NAME", "new", a file of
// the Maildir itself) for the FS methods: through the pinned directory
// descriptors when mb was pinned, otherwise by mb.Path.
func (mb Mailbox) at(elem ...string) string {
	if mb.pin == nil {
		return filepath.Join(append([]string{mb.Path}, elem...)...)
	}
	rel := filepath.Join(elem...)
	if rel == "" {
		return mb.pin.dir.Path()
	}
	sub, rest, _ := strings.Cut(rel, "/")
	if d, ok := mb.pin.subs[sub]; ok {
		if rest == "" {
			return d.Path()
		}
		return d.Path() + "/" + rest
	}
	return mb.pin.dir.Path() + "/" + rel
}

// release closes what pinMaildir opened for mb (nothing if mb is not
// pinned).
func (mb Mailbox) release() { mb.pin.release() }

// pinMaildir opens mb's Maildir and its subdirectories subs beneath the
// mail root under the symlink rule, creating what is missing (after the
// mount guard), and returns mb pinned to them: the caller uses mb.at for
// every name inside the Maildir and calls release when done.
//
// The fast path, a Maildir that exists, costs one open of the mail root
// and one openat2 per directory, all O_PATH: lookups the NFS client
// answers from its dentry cache while its attributes are fresh, where the
// unconfined store did one LSTAT of tmp/ that walked the same path.
func (s *Store) pinMaildir(mb Mailbox, subs ...string) (_ Mailbox, err error) {
	path := filepath.Clean(mb.Path)
	if !s.inRoot(path) || path == s.root {
		return mb, failure.Perm("maildir", "mailbox path outside the mail root", fmt.Errorf("%s not under %s", path, s.root))
	}
	if spool := s.spoolDir(); path == spool || strings.HasPrefix(path, spool+string(filepath.Separator)) {
		return mb, failure.Perm("maildir", "mailbox path inside nfsdrop's spool", fmt.Errorf("%s is under %s", path, spool))
	}
	rel, _ := filepath.Rel(s.root, path)
	var root Dir
	err = s.retryStale(func() error { var e error; root, e = s.fs.OpenDir(s.root); return e })
	if err != nil {
		return mb, s.classify("open mail root", err)
	}
	defer root.Close()
	trust := s.euid
	var dir Dir
	err = s.retryStale(func() error { var e error; dir, e = root.OpenBeneath(rel, trust); return e })
	if isErrno(err, syscall.ENOENT) {
		if err := s.CheckMount(); err != nil {
			return mb, err
		}
		dir, err = s.createBeneath(root, rel, mb)
		subs = maildirSubdirs[:]
	}
	if err != nil {
		return mb, s.refusal(mb, "open maildir", err)
	}
	pin := newPin(dir)
	defer func() {
		if err != nil {
			pin.release()
		}
	}()
	if err := s.pinSubdirs(pin, mb, subs); err != nil {
		return mb, err
	}
	mb.pin = pin
	return mb, nil
}

// pinSubdirs opens subs beneath the pinned Maildir. A missing one is
// repaired together with any other of tmp/, new/, cur/ that is missing (a
// Maildir left with tmp/ but no new/ would otherwise defer its mail
// forever); the ENOENT that tells is the open the fast path makes anyway.
func (s *Store) pinSubdirs(pin *maildirPin, mb Mailbox, subs []string) error {
	trust := s.euid
	open := func(sub string) error {
		if _, ok := pin.subs[sub]; ok {
			return nil
		}
		var d Dir
		err := s.retryStale(func() error { var e error; d, e = pin.dir.OpenBeneath(sub, trust); return e })
		if err == nil {
			pin.subs[sub] = d
		}
		return err
	}
	var missing string
	for _, sub := range subs {
		err := open(sub)
		if isErrno(err, syscall.ENOENT) {
			missing = sub
			break
		}
		if err != nil {
			return s.refusal(mb, "open maildir "+sub, err)
		}
	}
	if missing == "" {
		return nil
	}
	// A Maildir moved to another volume lacks them on purpose: its lock
	// is a tombstone (tombstone.go), read only now that the open failed,
	// and it must not be repaired back to life.
	if err := s.checkTombstone(pin.dir.Path() + "/" + LockName); err != nil {
		return err
	}
	if err := s.CheckMount(); err != nil {
		return err
	}
	s.log.Warn("repairing an incomplete Maildir", "maildir", mb.Path, "missing", missing)
	for _, sub := range maildirSubdirs {
		if _, ok := pin.subs[sub]; ok {
			continue
		}
		if err := s.mkdir(pin.dir.Path()+"/"+sub, 0o700, mb, true); err != nil {
			return err
		}
	}
	for _, sub := range subs {
		if err := open(sub); err != nil {
			return s.refusal(mb, "open maildir "+sub, err)
		}
	}
	return nil
}

// createBeneath makes the missing directories of rel beneath root, one
// component at a time, each looked up again under the symlink rule after
// it was made (so an administrator's link such as example.org ->
// vol2/example.org is followed, and the new Maildir lands under vol2).
// Parents get mode 0711 (traversable, not listable: a domain directory
// does not reveal its users); the Maildir 0700, owned by the mailbox.
func (s *Store) createBeneath(root Dir, rel string, mb Mailbox) (Dir, error) {
	trust := s.euid
	parts := splitPath(rel)
	parent := root
	for i, part := range parts {
		prefix := filepath.Join(parts[:i+1]...)
		last := i == len(parts)-1
		d, err := root.OpenBeneath(prefix, trust)
		if isErrno(err, syscall.ENOENT) {
			mode := os.FileMode(0o711)
			if last {
				mode = 0o700
			}
			if err = s.mkdir(parent.Path()+"/"+part, mode, mb, last); err == nil {
				d, err = root.OpenBeneath(prefix, trust)
			}
		}
		if parent != root {
			parent.Close()
		}
		if err != nil {
			return nil, err
		}
		parent = d
	}
	return parent, nil
}

// refusal turns an error of opening the Maildir into the store's answer;
// a path refused by the symlink rule is logged with what was refused (the
// peer is told only that the mailbox path was refused).
func (s *Store) refusal(mb Mailbox, op string, err error) error {
	var unsafe *UnsafePathError
	if !errors.As(err, &unsafe) {
		return s.classify(op, err)
	}
	s.log.Error("mailbox path refused: unsafe symlink", "maildir", mb.Path, "symlink", unsafe.Path, "owner", unsafe.Owner, "why", unsafe.Why)
	// Temporary, like the store's other permission problems: an
	// administrator can fix the link while the mail waits in the queue.
	return failure.Temp(op, "mailbox path refused (unsafe symlink)", err)
}

// pinRecipient returns mb pinned for publishing into its new/: another
// reference to the staging pin when mb is the Maildir the message was
// staged in (one recipient: no second resolution), else a pin of its own.
// The caller releases it.
func (st *Staged) pinRecipient(mb Mailbox) (Mailbox, error) {
	place := st.place
	if place.maildir != "" && place.maildir == filepath.Clean(mb.Path) &&
		place.pin != nil && place.pin.subs["tmp"] != nil && place.pin.subs["new"] != nil {
		mb.pin = place.pin.retain()
		return mb, nil
	}
	return st.s.pinMaildir(mb, "tmp", "new")
}

// releasePins releases the pins st holds; it is called once, by Discard.
func (st *Staged) releasePins() {
	st.place.pin.release()
	st.place.pin = nil
	for _, p := range st.extra {
		p.release()
	}
	st.extra = nil
}

// pinSpool opens the spool and its tmp/ beneath the mail root, making them
// on first use (the caller has checked the mount guard). The spool is the
// daemon's own directory: no symlink is followed on the way (trustNone),
// and what is there must be a directory.
func (s *Store) pinSpool() (*maildirPin, error) {
	var root Dir
	err := s.retryStale(func() error { var e error; root, e = s.fs.OpenDir(s.root); return e })
	if err != nil {
		return nil, s.classify("open mail root", err)
	}
	defer root.Close()
	spool, err := s.openOrMake(root, SpoolName)
	if err != nil {
		return nil, err
	}
	pin := newPin(spool)
	tmp, err := s.openOrMake(spool, "tmp")
	if err != nil {
		pin.release()
		return nil, err
	}
	pin.subs["tmp"] = tmp
	return pin, nil
}

// openOrMake opens the directory name beneath parent without following
// any symlink, making it (mode 0700, owned by the process) when missing.
func (s *Store) openOrMake(parent Dir, name string) (Dir, error) {
	open := func() (Dir, error) {
		var d Dir
		err := s.retryStale(func() error { var e error; d, e = parent.OpenBeneath(name, trustNone); return e })
		return d, err
	}
	d, err := open()
	if isErrno(err, syscall.ENOENT) {
		if err = s.mkdir(parent.Path()+"/"+name, 0o700, Mailbox{UID: -1, GID: -1}, false); err == nil {
			d, err = open()
		}
	}
	if err != nil {
		var unsafe *UnsafePathError
		if errors.As(err, &unsafe) {
			s.log.Error("spool refused: symlink", "path", unsafe.Path, "owner", unsafe.Owner)
			return nil, failure.Temp("open spool", "spool path refused (symlink)", err)
		}
		return nil, s.classify("open spool", err)
	}
	return d, nil
}
