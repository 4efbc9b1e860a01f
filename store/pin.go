package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nfsdrop/nfsdrop/internal/failure"
)

// maildirSubdirs is the order in which a Maildir's directories are made:
// tmp/ last, because OpenSession takes an existing tmp/ for a complete
// Maildir whose first delivery may still be under way on another machine.
var maildirSubdirs = [...]string{"cur", "new", "tmp"}

// maildirPin holds a Maildir and some of its tmp/, new/, cur/ open, as
// verified at use time (see confine.go). Mailbox.at names files through
// it. It belongs to one delivery or session and must be released.
type maildirPin struct {
	dir  Dir
	subs map[string]Dir
}

func (p *maildirPin) release() {
	if p == nil {
		return
	}
	for _, d := range p.subs {
		d.Close()
	}
	p.dir.Close()
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

// pinned reports whether mb is pinned with all of subs.
func (mb Mailbox) pinnedWith(subs ...string) bool {
	if mb.pin == nil {
		return false
	}
	for _, sub := range subs {
		if _, ok := mb.pin.subs[sub]; !ok {
			return false
		}
	}
	return true
}

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
	rel, _ := filepath.Rel(s.root, path)
	var root Dir
	err = s.retryStale(func() error { var e error; root, e = s.fs.OpenDir(s.root); return e })
	if err != nil {
		return mb, s.classify("open mail root", err)
	}
	defer root.Close()
	trust := os.Geteuid()
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
	pin := &maildirPin{dir: dir, subs: make(map[string]Dir, len(subs))}
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
	trust := os.Geteuid()
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
	trust := os.Geteuid()
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

// pinRecipient returns mb pinned for publishing into its new/: the
// staging pin when mb is the Maildir the message was staged in (one
// recipient: no second resolution), else a pin of its own, which the
// caller releases unless it is st's.
func (st *Staged) pinRecipient(mb Mailbox) (Mailbox, error) {
	if st.mb.pinnedWith("tmp", "new") && filepath.Clean(st.mb.Path) == filepath.Clean(mb.Path) {
		mb.pin = st.mb.pin
		return mb, nil
	}
	return st.s.pinMaildir(mb, "tmp", "new")
}

// releasePins releases the pins st holds; it is called once, by Discard.
func (st *Staged) releasePins() {
	st.mb.release()
	st.mb.pin = nil
	for _, mb := range st.extra {
		mb.release()
	}
	st.extra = nil
}
