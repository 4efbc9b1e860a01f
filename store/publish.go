package store

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Delivery describes a message published into a Maildir's new/.
type Delivery struct {
	// Key is the file name in new/: the message's Maildir key.
	Key string
	// Size is the stored size; CRLFSize the size with CRLF line ends.
	Size, CRLFSize int64
	// Linked is true when the file is a hard link of the staged copy.
	Linked bool
}

// Deliver publishes the staged message into mb's new/ and returns once it
// is durable there. Each call is independent: a failure for one mailbox
// (over quota, bad path) leaves the staged copy usable for the others.
func (st *Staged) Deliver(mb Mailbox) (Delivery, error) {
	return st.observed(st.deliver(mb, nil))
}

// DeliverWithPrefix publishes a copy of the staged message with prefix
// (per-recipient header lines) written before it. It costs a second write
// of the message, so callers use it only when a recipient's copy must
// differ from the others'.
func (st *Staged) DeliverWithPrefix(mb Mailbox, prefix []byte) (Delivery, error) {
	return st.observed(st.deliver(mb, prefix))
}

// observed reports a recipient's outcome to a DeliveryObserver.
func (st *Staged) observed(d Delivery, err error) (Delivery, error) {
	if o := st.s.dobs; o != nil {
		o.Delivery(err, time.Since(st.started))
	}
	return d, err
}

func (st *Staged) deliver(mb Mailbox, prefix []byte) (Delivery, error) {
	s := st.s
	maildir := filepath.Clean(mb.Path)
	if d, ok := st.published[maildir]; ok && prefix == nil {
		// Another recipient of this message has the same Maildir and was
		// answered for this very file: it is already durable there.
		return d, nil
	}
	// Whatever happens now, this recipient does not need the staged file
	// again; the last one may take it.
	_, expected := st.waiting[maildir]
	delete(st.waiting, maildir)
	last := expected && len(st.waiting) == 0
	if st.late() {
		return Delivery{}, lateError()
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
		// sameFile is true when dst is the staged file itself (linked or
		// renamed), false for a copy.
		sameFile bool
	)
	sameOwner := !s.chown || (st.owned && st.uid == mb.UID && st.gid == mb.GID)
	if prefix == nil && sameOwner && (st.noLinks || last) && st.inTmp {
		// The only or last recipient (or a filesystem without hard
		// links): rename the staged file into place, one call where a
		// link and the unlink of the tmp/ name are two. Later recipients,
		// if any come unannounced, are served from there.
		d = Delivery{Key: fullName(st.base, st.size, st.crlfSize), Size: st.size, CRLFSize: st.crlfSize}
		dst = filepath.Join(newDir, d.Key)
		if err := st.moveStaged(mb, dst); err != nil {
			return Delivery{}, err
		}
		d.Linked, sameFile = true, true
	} else if prefix == nil && sameOwner && !st.noLinks {
		d = Delivery{Key: fullName(st.base, st.size, st.crlfSize), Size: st.size, CRLFSize: st.crlfSize}
		dst = filepath.Join(newDir, d.Key)
		existed, err := s.publishLink(st.src, st.srcInfo, st.srcInfo.Nlink+st.links, dst)
		switch {
		case err == nil:
			d.Linked, ourLink, sameFile = true, true, true
			st.links++
			mayWithdraw = !existed || st.acked == 0
		case isErrno(err, syscall.EXDEV):
			// Another filesystem: copy below.
		case isErrno(err, syscall.EPERM) && st.inTmp:
			// A filesystem without hard links: rename the staged file
			// into place; later recipients copy from there.
			st.noLinks = true
			if err := st.moveStaged(mb, dst); err != nil {
				return Delivery{}, err
			}
			d.Linked, sameFile = true, true
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
	if err := s.syncDir(mb, "new"); err != nil && !s.sealedByMove(mb, err) {
		// The entry may not be durable, so the caller must not
		// acknowledge, and Postfix will deliver again under a new name.
		// Take our entry back out so that retry does not double it.
		st.withdraw(dst, filepath.Join(mb.Path, "new", d.Key), mayWithdraw, ourLink)
		return Delivery{}, s.classify("fsync new", err)
	}
	if mayWithdraw && st.late() {
		// Durable, but too late to be answered for: the client may have
		// given up and will send the message again. A file another
		// recipient was already answered for stays (!mayWithdraw), and
		// this recipient is answered for it too. So does one a move
		// sealed away meanwhile: the move carried it, and Postfix's
		// retry would be a second copy.
		switch st.withdraw(dst, filepath.Join(mb.Path, "new", d.Key), true, ourLink) {
		case withdrawn:
			return Delivery{}, lateError()
		case alreadyGone:
			// Our own REMOVE whose reply was lost answers ENOENT too:
			// only a move's tombstone says the message is safe.
			if !s.sealedByMove(mb, syscall.ENOENT) {
				return Delivery{}, lateError()
			}
		case stillThere:
			// Durable in new/ and not taken back (the filer refused
			// the REMOVE): a 4xx would make Postfix's retry a sure
			// second copy; the answer may still reach the client.
		}
	}
	if sameFile {
		st.acked++
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

// moveStaged renames the staged file to dst in mb's new/. src then names
// it there, through mb's pin, which st keeps open.
func (st *Staged) moveStaged(mb Mailbox, dst string) error {
	if err := st.s.publishRename(st.src, st.srcInfo, dst); err != nil {
		return st.s.classify("rename into new", err)
	}
	st.src, st.inTmp = dst, false
	st.extra = append(st.extra, mb.pin.retain())
	return nil
}

// withdrawal is what withdraw did with a published entry.
type withdrawal int

const (
	withdrawn   withdrawal = iota // removed (or moved back to the staging place)
	alreadyGone                   // not there (ENOENT): a lost REMOVE reply, or a move's seal
	stillThere                    // left in new/ (not allowed, or the REMOVE failed)
)

// withdraw removes dst (named for messages dstName) after its directory
// fsync failed, unless it may be a file another recipient was answered
// for (allowed false).
// It reports what became of dst.
func (st *Staged) withdraw(dst, dstName string, allowed, ourLink bool) withdrawal {
	s := st.s
	if !allowed {
		s.log.Warn("not withdrawing a message whose directory fsync failed: another recipient has the same file", "path", dstName)
		return stillThere
	}
	if dst == st.src && !st.inTmp {
		// The staged file itself was renamed here (no hard links): move
		// it back, since the other recipients copy from it.
		back := filepath.Join(st.place.dir, st.base)
		if err := s.fs.Rename(dst, back); err == nil {
			st.src, st.inTmp = back, true
			return withdrawn
		}
	}
	err := s.fs.Remove(dst)
	if err != nil && !isErrno(err, syscall.ENOENT) {
		s.log.Warn("could not withdraw a message from new/ (its directory fsync failed, or it came too late)", "path", dstName, "err", err)
		return stillThere
	}
	if ourLink {
		st.links--
	}
	if err != nil {
		return alreadyGone
	}
	return withdrawn
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
	// The copy is this recipient's alone: rename it into place.
	if err = s.publishRename(cp.src, cp.srcInfo, dst); err == nil {
		cp.inTmp = false
	}
	return d, s.classify("publish copy", err)
}

// publishLink links src to dst. Over NFS a LINK whose reply was lost is
// retransmitted and the retransmission answers EEXIST (or ENOENT) although
// the first one worked, and a LINK that answers EIO may have been carried
// out, so on an error dst is checked: if it is our inode, the link
// succeeded (existed reports that it answered so). Anything else at dst is
// a name collision, reported as a temporary failure (Postfix retries under
// a new name). nlink is src's link count before this link, as the caller
// knows it.
func (s *Store) publishLink(src string, srcInfo Info, nlink uint64, dst string) (existed bool, err error) {
	err = s.retryStale(func() error { return s.fs.Link(src, dst) })
	if err == nil || !mayHaveHappened(err) {
		return false, err
	}
	if s.verifyPublished(src, srcInfo, nlink, dst, true) {
		s.log.Debug("link answered an error but had succeeded (lost NFS reply)", "err", err, "path", dst)
		return true, nil
	}
	return false, err
}

// publishRename renames src to dst, with the same verification: a
// retransmitted RENAME answers ENOENT because src is already gone (or,
// from some servers, EEXIST), and one that answers EIO may have been
// carried out. rename() replaces whatever dst held: dst must be a name
// unique by construction (uniqueBase), as every name in new/ is.
func (s *Store) publishRename(src string, srcInfo Info, dst string) error {
	err := s.retryStale(func() error { return s.fs.Rename(src, dst) })
	if err == nil || !mayHaveHappened(err) {
		return err
	}
	if s.verifyPublished(src, srcInfo, 0, dst, false) {
		s.log.Debug("rename answered an error but had succeeded (lost NFS reply)", "err", err, "path", dst)
		return nil
	}
	return err
}

// verifyRetries and verifyRetryWait bound how long verifyPublished asks
// again after ETIMEDOUT: 15 s, beyond the gate's default probe interval
// plus timeout.
const (
	verifyRetries   = 30
	verifyRetryWait = 500 * time.Millisecond
)

// mayHaveHappened reports whether a LINK or RENAME that answered err may
// nevertheless have been carried out by the server: any error but the
// ones that say the operation is not supported there (the caller falls
// back to another way) or that the name could not be reached at all.
func mayHaveHappened(err error) bool {
	return !isErrno(err, syscall.EXDEV) && !isErrno(err, syscall.EPERM) && !isErrno(err, syscall.ESTALE)
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
	// ETIMEDOUT cannot tell, and answering "not published" for an entry
	// that is in new/ makes Postfix's retry a second copy. It is what the
	// hung-filer gate answers while its probe still holds the volume down
	// although the filer is back (it has just answered our LINK/RENAME):
	// ask again for as long as the probe needs to notice.
	for i := 0; i < verifyRetries && isErrno(err, syscall.ETIMEDOUT); i++ {
		<-s.after(verifyRetryWait)
		err = s.retryStale(func() error { var e error; info, e = s.fs.Lstat(dst); return e })
	}
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

// Deliver is Stage + Deliver + Discard for a single mailbox.
func (s *Store) Deliver(mb Mailbox, r io.Reader) (Delivery, error) {
	st, err := s.Stage(mb, r)
	if err != nil {
		return Delivery{}, err
	}
	defer st.Discard()
	return st.Deliver(mb)
}
