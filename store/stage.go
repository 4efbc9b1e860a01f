package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

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
	// knows the file's name. acked is how many recipients were answered
	// as delivered with this very file (linked, or renamed into place).
	links, acked uint64
	// published maps a cleaned Maildir path to the delivery already made
	// there from this message without a prefix: a second recipient with the
	// same Maildir (user+a and user+b, aliases) gets the same answer instead
	// of a second link, a second quota charge, or a withdrawal of a file the
	// first was answered for.
	published map[string]Delivery
	// waiting holds the cleaned Maildir paths of the recipients this
	// message was staged for that have not been delivered (or failed)
	// yet. The last of them takes the staged file itself with one rename
	// instead of a link and a later unlink of the tmp/ name; until then
	// the file stays where it was staged, so that no recipient's trouble
	// reaches the others.
	waiting map[string]struct{}
	// extra are recipients' pins src came to depend on (the rename
	// fallback publishes the staged file itself through one). Discard
	// releases them with place.pin.
	extra []*maildirPin
	// deadline, when not zero, is the time (on the store's clock) after
	// which this message is no longer published: see SetDeadline.
	deadline time.Time
	// started is when staging began, for the delivery latency.
	started time.Time
}

// observeStageFailure reports a failed staging as the outcome of each of
// its recipients.
func (s *Store) observeStageFailure(n int, started time.Time, err error) {
	if s.dobs == nil {
		return
	}
	for range n {
		s.dobs.Delivery(err, time.Since(started))
	}
}

// ErrCommitDeadline is the cause of a recipient's temporary failure when
// the message could not be published before its deadline (SetDeadline).
var ErrCommitDeadline = errors.New("commit deadline passed: the client may have stopped waiting for the answer")

// SetDeadline makes Deliver publish only before t, on the store's clock
// (Options.Now). A client that stopped waiting (Postfix gives up on an
// LMTP answer after lmtp_data_done_timeout) sends the message again
// later, so publishing it after that would deliver it twice. A recipient
// reached at or after t gets a temporary failure and nothing in new/; so
// does one whose publish ended after t (a filer that hung meanwhile):
// its file is taken back out of new/ like one whose directory fsync
// failed. The zero time publishes whenever.
func (st *Staged) SetDeadline(t time.Time) { st.deadline = t }

// late reports whether the deadline has passed.
func (st *Staged) late() bool { return !st.deadline.IsZero() && !st.s.now().Before(st.deadline) }

func lateError() error {
	return failure.Temp("publish", "delivery took too long", ErrCommitDeadline)
}

// Size is the staged message's size in bytes.
func (st *Staged) Size() int64 { return st.size }

// Stage writes r durably into mb's tmp/ (creating the Maildir if needed).
// The returned Staged holds the file; nothing is visible in new/ yet. An
// error from r (a client gone mid-DATA, a size limit) fails the stage and
// removes the file; a *failure.Error from r is passed through as it is.
func (s *Store) Stage(mb Mailbox, r io.Reader) (*Staged, error) {
	started := time.Now()
	st, err := s.stage(mb, r)
	if err != nil {
		s.observeStageFailure(1, started, err)
		return nil, err
	}
	st.started = started
	return st, nil
}

func (s *Store) stage(mb Mailbox, r io.Reader) (*Staged, error) {
	if err := s.CheckMount(); err != nil {
		return nil, err
	}
	pinned, err := s.pinMaildir(mb, "tmp", "new")
	if err != nil {
		return nil, err
	}
	defer pinned.release()
	st, err := s.writeTmp(mailboxTmp(pinned), r)
	if err != nil {
		return nil, err
	}
	st.waiting = waitingFor([]Mailbox{mb})
	return st, nil
}

// waitingFor is the set of Maildirs recipients will be delivered to.
func waitingFor(recipients []Mailbox) map[string]struct{} {
	w := make(map[string]struct{}, len(recipients))
	for _, mb := range recipients {
		w[filepath.Clean(mb.Path)] = struct{}{}
	}
	return w
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
	started := time.Now()
	st, err := s.stageSpool(recipients, r)
	if err != nil {
		s.observeStageFailure(len(recipients), started, err)
		return nil, err
	}
	st.started = started
	return st, nil
}

// stageSpool is StageFor for several recipients.
func (s *Store) stageSpool(recipients []Mailbox, r io.Reader) (*Staged, error) {
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
	st.waiting = waitingFor(recipients)
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

// writeTmp is step 2 of the algorithm: create in place's tmp/, write,
// fsync, checked close. On any error the tmp file is removed.
func (s *Store) writeTmp(place tmpPlace, r io.Reader) (st *Staged, err error) {
	f, base, tmpPath, info, err := s.createTmp(place)
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
	wantOwner := s.chown && !ownedBy(info, place.uid, place.gid)
	if wantOwner && !place.spool {
		// A SETATTR on NFS: only when the file is not born with the
		// right owner (a process running as root delivering for a user).
		if err = f.Chown(place.uid, place.gid); err != nil {
			return nil, s.classify("chown tmp file", err)
		}
	}
	var cnt crlfCounter
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := fill(r, buf)
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

// fill reads from r until buf is full or r returns an error (io.EOF at
// the end), and returns what it read with that error (nil when full). The
// message arrives in pieces (trace headers, header section, then the body
// in whatever chunks the client's reader hands over): writing a full
// buffer at a time makes one write(2) of a small message instead of one
// per piece.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ownedBy reports whether info's owner is already uid and gid (-1: any).
func ownedBy(info Info, uid, gid int) bool {
	return (uid < 0 || info.UID == uid) && (gid < 0 || info.GID == gid)
}

// createTmp creates a fresh file in place.dir and returns it with its
// attributes (identity and link count for publishing, owner for chown).
//
// The name is unique by construction (uniqueBase: time to the
// microsecond, pid, a per-process counter, 32 random bits, the host), so
// the create needs no O_EXCL: without it an NFSv3 client sends one
// UNCHECKED CREATE where O_EXCL costs an EXCLUSIVE CREATE and a SETATTR
// (two mutating calls), and a CREATE retransmitted after a lost reply
// simply opens the same empty file. What O_EXCL guarded against, another
// process holding the same name (a clock stepped back and a pid reused),
// would also need the same microsecond, counter and random part; it is
// still checked, for free: the file just made must be an empty regular
// file with one link (its attributes come with the CREATE reply), else it
// is someone else's, left alone, and a fresh name is taken. O_NOFOLLOW:
// a symlink planted under the name is never written through.
func (s *Store) createTmp(place tmpPlace) (f File, base, tmpPath string, info Info, err error) {
	for attempt := 0; ; attempt++ {
		base = s.newBase()
		tmpPath = filepath.Join(place.dir, base)
		f, info, err = s.createFresh(tmpPath, s.bornOwner(place))
		if errors.Is(err, errNotFresh) && attempt < 3 {
			s.log.Warn("a new tmp/ name was taken; trying another", "path", filepath.Join(place.name, base))
			continue
		}
		return f, base, tmpPath, info, err
	}
}

// errNotFresh says that a name unique by construction held a file that is
// not the one just created.
var errNotFresh = errors.New("tmp file name already in use")

// owner is who a new file is created as (setfsuid/setfsgid, FS.CreateAs);
// as is false to create it as the process.
type owner struct {
	as       bool
	uid, gid int
}

// bornOwner says whether a tmp/ file for place is created as its mailbox's
// owner: when chowning as root into a mailbox's own tmp/ (not the spool,
// whose file is given away only after it is written: issue 13), so that
// the file is born theirs and needs no SETATTR (chown) on NFS.
func (s *Store) bornOwner(place tmpPlace) owner {
	if !s.chown || place.spool || s.euid != 0 {
		return owner{}
	}
	uid, gid := place.uid, place.gid
	if uid == s.euid {
		uid = -1
	}
	if gid == s.egid {
		gid = -1
	}
	return owner{as: uid >= 0 || gid >= 0, uid: uid, gid: gid}
}

// createFresh creates path (see createTmp), as o says. When the create
// fails, the name is removed: a CREATE that worked but whose reply was
// lost may answer an error (EEXIST, EIO...) and leave an empty file that
// nobody else knows the name of. When the owner may not create in the
// directory (EACCES, EPERM: a tmp/ that is not theirs), the file is
// created as the process instead, and writeTmp chowns it.
func (s *Store) createFresh(path string, o owner) (File, Info, error) {
	const flag = os.O_WRONLY | os.O_CREATE | syscall.O_NOFOLLOW
	var f File
	err := s.retryStale(func() error {
		var oerr error
		if o.as {
			f, oerr = s.fs.CreateAs(path, flag, 0o600, o.uid, o.gid)
			if isErrno(oerr, syscall.EACCES) || isErrno(oerr, syscall.EPERM) {
				o.as = false
			} else {
				return oerr
			}
		}
		f, oerr = s.fs.OpenFile(path, flag, 0o600)
		return oerr
	})
	if err != nil {
		if isErrno(err, syscall.ELOOP) {
			return nil, Info{}, fmt.Errorf("%w: a symlink", errNotFresh)
		}
		if rerr := s.fs.Remove(path); rerr != nil && !isErrno(rerr, syscall.ENOENT) {
			s.log.Warn("could not remove a tmp file whose create failed", "path", ResolvedPath(path), "err", rerr)
		}
		return nil, Info{}, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		s.fs.Remove(path) // made by us a moment ago, or by nobody
		return nil, Info{}, s.classify("fstat", err)
	}
	if !info.Mode.IsRegular() || info.Size != 0 || info.Nlink != 1 {
		f.Close()
		return nil, Info{}, fmt.Errorf("%w: size %d, %d links", errNotFresh, info.Size, info.Nlink)
	}
	return f, info, nil
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
	cp, err := s.writeTmp(st.place, io.MultiReader(bytes.NewReader(prefix), f))
	if err != nil {
		return nil, err
	}
	cp.deadline, cp.started = st.deadline, st.started
	// The copy goes to the recipients the original was still waiting for.
	cp.waiting = make(map[string]struct{}, len(st.waiting))
	for k := range st.waiting {
		cp.waiting[k] = struct{}{}
	}
	return cp, nil
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
