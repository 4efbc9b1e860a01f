package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Moving a Maildir to another volume while it is in use (the protocol and
// why each step is there: docs/store.md, "Moving a mailbox to another
// volume"). In short, with S the source Maildir and D the destination:
//
//  1. copy: S's messages are copied, each with the durable write path and
//     under its exact name (so every UIDL stays), into a hidden staging
//     Maildir next to D, in rounds while deliveries and sessions go on;
//  2. switch: S's session lock is taken the normal way and replaced by the
//     tombstone "moving:VOLUME"; S/tmp is renamed away (new deliveries
//     fail their open of tmp/ and read the tombstone); deliveries already
//     writing are given a bounded time to finish; S is sealed: every
//     message is renamed out of S/new and S/cur into a holding directory
//     in S and the emptied directory removed, which succeeds only once
//     nothing can be added to it any more; the staging copy is made an
//     exact mirror of the holding directory (plus the legacy UIDL lists
//     and other top-level files, the Maildir++ folders, and a maildirsize
//     recounted), verified (names, sizes, SHA-256), and published as D
//     with one rename;
//  3. the tombstone becomes "moved:VOLUME" and S is emptied down to it.
//
// Every step leaves a state recognisable on disk (InspectMove), so a Move
// killed anywhere is resumed by running it again, or, before D is
// published, undone by RollbackMove. There is never more than one live
// mailbox: D appears (one rename) only when S is sealed and tombstoned.

// Names a move uses inside the source Maildir and next to the destination.
const (
	// moveTmpName is S/tmp renamed away at the switch (not a Maildir: the
	// sweepers leave it alone).
	moveTmpName = ".nfsdrop-move-tmp"
	// moveHoldName holds S's new/ and cur/ messages once S is sealed.
	moveHoldName = ".nfsdrop-move-hold"
	// moveLockDraft is the tombstone symlink before it is renamed over
	// the session lock.
	moveLockDraft = ".nfsdrop-move-lock"
	// moveRunningName is the lock a running Move or RollbackMove holds in
	// S (a session-style lock: refreshed, taken over when stale), so that
	// a second run, on this machine or another, does not act at once.
	moveRunningName = ".nfsdrop-move-running"
	// moveLockStale is that lock's staleness: how long a run killed with
	// kill -9 keeps the next one out.
	moveLockStale = time.Minute
	// moveStagingSuffix ends the staging Maildir's name: "."+D's name+it.
	moveStagingSuffix = ".nfsdrop-move"
	// maxSealRounds bounds the seal's "empty the directory, remove it"
	// loop (each round that fails found a message published meanwhile).
	maxSealRounds = 100
)

// MoveStep names a point of the protocol, reported to MoveOptions.Progress
// as it is passed.
type MoveStep string

// The steps, in order. StepCopying, StepLockWait, StepSealing and
// StepCleaning are reported inside a step (the first file copied, each
// wait for a POP3 session, the first message sealed, the first file
// removed).
const (
	StepCopying     MoveStep = "copying"
	StepCopied      MoveStep = "copied"
	StepLockWait    MoveStep = "lock-wait"
	StepLocked      MoveStep = "locked"
	StepTmpRenamed  MoveStep = "tmp-renamed"
	StepDrained     MoveStep = "drained"
	StepSealing     MoveStep = "sealing"
	StepSealed      MoveStep = "sealed"
	StepFinalCopied MoveStep = "final-copied"
	StepVerified    MoveStep = "verified"
	StepPublished   MoveStep = "published"
	StepMarked      MoveStep = "marked-moved"
	StepCleaning    MoveStep = "cleaning"
	StepCleaned     MoveStep = "cleaned"
)

// MoveOptions configures Move and RollbackMove.
type MoveOptions struct {
	// Rounds bounds the copy rounds made while the mailbox is in use
	// (0: 3); copying stops earlier after a round that copied nothing.
	Rounds int
	// LockStale must be the POP3 daemons' lock_stale: a session lock
	// older than that is taken over as theirs would be (0: 5m).
	LockStale time.Duration
	// LockWait is how long the switch waits for a POP3 session holding
	// the mailbox to end (0: 2m); then Move fails with failure.InUse and
	// changes nothing (the copy made so far is kept for the next run).
	LockWait time.Duration
	// DrainWait is how long the switch waits for deliveries that were
	// writing into S/tmp when it was renamed away to publish (0: 10s).
	// Waiting is a courtesy, not a safety: a delivery still writing after
	// it gets a temporary failure and Postfix delivers it again.
	DrainWait time.Duration
	// Poll is the interval of those waits (0: 200ms).
	Poll time.Duration
	// Owner names the mover in the session lock while it takes it.
	Owner string
	// Progress, if set, is told each step as it is passed.
	Progress func(MoveStep)
	// stepHook stops Move at a step (tests: a kill -9 there).
	stepHook func(MoveStep) error
}

func (o MoveOptions) withDefaults() MoveOptions {
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.LockStale <= 0 {
		o.LockStale = 5 * time.Minute
	}
	if o.LockWait <= 0 {
		o.LockWait = 2 * time.Minute
	}
	if o.DrainWait <= 0 {
		o.DrainWait = 10 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.Owner == "" {
		o.Owner = "maildir-move"
	}
	return o
}

// MoveState is where a move stands, as its traces on disk say.
type MoveState int

const (
	// MoveNone: no move; S is an ordinary Maildir.
	MoveNone MoveState = iota
	// MoveCopying: a staging copy exists, S is live (rollback: drop the
	// copy).
	MoveCopying
	// MoveSwitching: S is tombstoned "moving", D not published yet;
	// deliveries and logins get temporary failures until the move is
	// resumed or rolled back.
	MoveSwitching
	// MovePublished: D is live, S still says "moving" (resume marks it).
	MovePublished
	// MoveCleaning: S says "moved", its old files are not all removed.
	MoveCleaning
	// MoveDone: S is the tombstone alone.
	MoveDone
)

var moveStateNames = [...]string{"none", "copying", "switching", "published", "cleaning", "done"}

func (s MoveState) String() string {
	if int(s) < len(moveStateNames) {
		return moveStateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MoveStatus is what InspectMove finds.
type MoveStatus struct {
	State MoveState
	// Volume is the volume a tombstone at S names ("" without one).
	Volume string
	// Staging and Published say whether the staging copy and D exist.
	Staging, Published bool
}

// MoveReport is what Move did.
type MoveReport struct {
	// Resumed is true when Move found a move under way and went on.
	Resumed bool
	// Rounds is the number of copy rounds made while S was live; Copied
	// the files copied in all (rounds and final copy).
	Rounds, Copied int
	// Messages and Bytes are what D holds, as verified.
	Messages int
	Bytes    int64
	// DrainTimedOut is true when deliveries still writing at the switch
	// were failed (temporarily) instead of waited for.
	DrainTimedOut bool
}

// Move moves the Maildir srcMb of src (one volume) to dstMb of dst
// (another volume; toVolume is its configured name, which the tombstone
// left at srcMb names) while deliveries and POP3 sessions go on. Run again
// after any interruption, it resumes where the last run stopped; it
// refuses to start when dstMb exists already, and to resume a move to
// another volume. On success srcMb holds nothing but the tombstone, which
// must stay until every machine finds the mailbox on toVolume without it
// (the user database names that volume, and its caches have expired).
//
// An error after the switch began leaves the mailbox tombstoned "moving"
// (temporary failures for the user) until Move is run again or
// RollbackMove undoes it; the error says which.
func Move(ctx context.Context, src *Store, srcMb Mailbox, dst *Store, dstMb Mailbox, toVolume string, o MoveOptions) (MoveReport, error) {
	m, err := openMover(ctx, src, srcMb, dst, dstMb, toVolume, o)
	if err != nil {
		return MoveReport{}, err
	}
	defer m.close()
	if err := m.lockMover(); err != nil {
		return MoveReport{}, err
	}
	err = m.run()
	return m.report, err
}

// InspectMove says where a move of srcMb to dstMb stands.
func InspectMove(ctx context.Context, src *Store, srcMb Mailbox, dst *Store, dstMb Mailbox) (MoveStatus, error) {
	m, err := openMover(ctx, src, srcMb, dst, dstMb, "", MoveOptions{})
	if err != nil {
		return MoveStatus{}, err
	}
	defer m.close()
	return m.inspect()
}

// RollbackMove undoes a move of srcMb to dstMb (toVolume) that has not
// published dstMb yet: the staging copy is removed, S's messages are put
// back under their names, S/tmp comes back and the tombstone goes, in that
// order (so that a rollback interrupted in turn can be run again, or the
// move resumed). A move whose destination is live is not rolled back
// (resume it, then move the mailbox back).
func RollbackMove(ctx context.Context, src *Store, srcMb Mailbox, dst *Store, dstMb Mailbox, toVolume string, o MoveOptions) error {
	m, err := openMover(ctx, src, srcMb, dst, dstMb, toVolume, o)
	if err != nil {
		return err
	}
	defer m.close()
	if err := m.lockMover(); err != nil {
		return err
	}
	return m.rollback()
}

type mover struct {
	ctx          context.Context
	src, dst     *Store
	srcMb, dstMb Mailbox
	volume       string
	o            MoveOptions
	// srcDir is S, opened beneath src's root under the symlink rule;
	// dstParent the directory D is (to be) in, beneath dst's root.
	srcDir, dstParent Dir
	dstName           string
	report            MoveReport
	reported          map[MoveStep]bool
	// running is the lock of this run (moveRunningName) and pinned the
	// Maildir it is in; both nil until lockMover.
	running *dotlock
	pinned  Mailbox
}

func openMover(ctx context.Context, src *Store, srcMb Mailbox, dst *Store, dstMb Mailbox, toVolume string, o MoveOptions) (*mover, error) {
	if toVolume != "" && !volumeName.MatchString(toVolume) {
		return nil, failure.Perm("move", "not a volume name", fmt.Errorf("%q", toVolume))
	}
	srcMb.Path, dstMb.Path = filepath.Clean(srcMb.Path), filepath.Clean(dstMb.Path)
	if err := src.CheckMount(); err != nil {
		return nil, err
	}
	if err := dst.CheckMount(); err != nil {
		return nil, err
	}
	srcDir, err := openExistingBeneath(src, srcMb.Path)
	if err != nil {
		return nil, err
	}
	dstParent, err := makeParentBeneath(dst, dstMb.Path)
	if err != nil {
		srcDir.Close()
		return nil, err
	}
	return &mover{ctx: ctx, src: src, dst: dst, srcMb: srcMb, dstMb: dstMb, volume: toVolume,
		o: o.withDefaults(), srcDir: srcDir, dstParent: dstParent, dstName: filepath.Base(dstMb.Path),
		reported: make(map[MoveStep]bool)}, nil
}

func (m *mover) close() {
	if m.running != nil {
		m.running.Release()
		m.pinned.release()
	}
	m.srcDir.Close()
	m.dstParent.Close()
}

// lockMover takes the run's lock in S: a second run (another terminal,
// another machine) gets failure.InUse instead of acting alongside this
// one, and one that finds the lock of a run killed with kill -9 takes it
// over after moveLockStale.
func (m *mover) lockMover() error {
	pinned, err := m.src.pinMaildir(m.srcMb)
	if err != nil {
		return err
	}
	l, err := m.src.acquireLockAt(pinned, moveRunningName, "", moveLockStale, m.o.Owner)
	if err != nil {
		pinned.release()
		if failure.KindOf(err) == failure.InUse {
			return failure.New(failure.InUse, "move", "another move of this mailbox is running (or one was killed less than "+moveLockStale.String()+" ago)", err)
		}
		return err
	}
	m.running, m.pinned = l, pinned
	return nil
}

// openExistingBeneath opens the Maildir at path beneath s's root under the
// symlink rule, without creating anything.
func openExistingBeneath(s *Store, path string) (Dir, error) {
	if !s.inRoot(path) || path == s.root {
		return nil, failure.Perm("move", "mailbox path outside the mail root", fmt.Errorf("%s not under %s", path, s.root))
	}
	rel, _ := filepath.Rel(s.root, path)
	root, err := s.fs.OpenDir(s.root)
	if err != nil {
		return nil, s.classify("open mail root", err)
	}
	defer root.Close()
	d, err := root.OpenBeneath(rel, os.Geteuid())
	if isErrno(err, syscall.ENOENT) {
		return nil, failure.New(failure.NotFound, "move", "no such Maildir", err)
	}
	if err != nil {
		return nil, s.refusal(Mailbox{Path: path}, "open maildir", err)
	}
	return d, nil
}

// makeParentBeneath opens (making what is missing, mode 0711 like the
// parents a delivery makes) the directory path is to be created in.
func makeParentBeneath(s *Store, path string) (Dir, error) {
	if !s.inRoot(path) || path == s.root {
		return nil, failure.Perm("move", "mailbox path outside the mail root", fmt.Errorf("%s not under %s", path, s.root))
	}
	rel, _ := filepath.Rel(s.root, filepath.Dir(path))
	root, err := s.fs.OpenDir(s.root)
	if err != nil {
		return nil, s.classify("open mail root", err)
	}
	if rel == "." {
		return root, nil
	}
	defer root.Close()
	trust := os.Geteuid()
	var parent Dir
	for i, part := range splitPath(rel) {
		prefix := filepath.Join(splitPath(rel)[:i+1]...)
		d, err := root.OpenBeneath(prefix, trust)
		if isErrno(err, syscall.ENOENT) {
			at := root.Path() + "/" + part
			if parent != nil {
				at = parent.Path() + "/" + part
			}
			if err = s.mkdir(at, 0o711, Mailbox{UID: -1, GID: -1}, false); err == nil {
				d, err = root.OpenBeneath(prefix, trust)
			}
		}
		if parent != nil {
			parent.Close()
		}
		if err != nil {
			return nil, s.refusal(Mailbox{Path: path}, "open destination parent", err)
		}
		parent = d
	}
	return parent, nil
}

// step reports st and lets a test stop the move there.
func (m *mover) step(st MoveStep) error {
	if m.o.Progress != nil {
		m.o.Progress(st)
	}
	if m.o.stepHook != nil {
		if err := m.o.stepHook(st); err != nil {
			return err
		}
	}
	return m.ctx.Err()
}

// stepOnce is step for the points inside a step, reported once per run.
func (m *mover) stepOnce(st MoveStep) error {
	if m.reported[st] {
		return nil
	}
	m.reported[st] = true
	return m.step(st)
}

func (m *mover) srcAt(elem ...string) string {
	return m.srcDir.Path() + "/" + filepath.Join(elem...)
}

func (m *mover) stagingName() string { return "." + m.dstName + moveStagingSuffix }

func (m *mover) dstAt(elem ...string) string {
	return m.dstParent.Path() + "/" + filepath.Join(elem...)
}

// exists reports whether path exists on s (lstat; ENOENT is false).
func exists(s *Store, path string) (bool, error) {
	err := s.retryStale(func() error { _, err := s.fs.Lstat(path); return err })
	if isErrno(err, syscall.ENOENT) {
		return false, nil
	}
	return err == nil, err
}

func (m *mover) inspect() (MoveStatus, error) {
	var st MoveStatus
	var tomb string
	lf, err := m.src.readLock(m.srcAt(LockName))
	switch {
	case isErrno(err, syscall.ENOENT):
	case err != nil:
		return st, m.src.classify("read session lock", err)
	default:
		tomb, st.Volume, _ = tombstone(lf.token)
	}
	if st.Staging, err = exists(m.dst, m.dstAt(m.stagingName())); err != nil {
		return st, m.dst.classify("look for the staging copy", err)
	}
	if st.Published, err = exists(m.dst, m.dstAt(m.dstName)); err != nil {
		return st, m.dst.classify("look for the destination", err)
	}
	switch {
	case tomb == "" && st.Staging:
		st.State = MoveCopying
	case tomb == "":
		st.State = MoveNone
	case tomb == tombstoneMoving && st.Published:
		st.State = MovePublished
	case tomb == tombstoneMoving:
		st.State = MoveSwitching
	default:
		names, err := m.src.readDirNames(m.srcDir.Path())
		if err != nil {
			return st, m.src.classify("list the source", err)
		}
		names = slices.DeleteFunc(names, func(n string) bool { return n == moveRunningName })
		st.State = MoveDone
		if len(names) != 1 || names[0] != LockName {
			st.State = MoveCleaning
		}
	}
	return st, nil
}

func (m *mover) run() error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if st.Volume != "" && st.Volume != m.volume {
		return failure.Perm("move", "a move to another volume is under way", fmt.Errorf("%s is being moved to volume %s", m.srcMb.Path, st.Volume))
	}
	m.report.Resumed = st.State != MoveNone
	if st.State <= MoveCopying {
		if st.Published {
			return failure.Perm("move", "the destination exists", fmt.Errorf("%s exists", m.dstMb.Path))
		}
		if err := m.copyRounds(); err != nil {
			return err
		}
		if err := m.step(StepCopied); err != nil {
			return err
		}
		if err := m.takeTombstone(); err != nil {
			return err
		}
		if err := m.step(StepLocked); err != nil {
			return err
		}
		st.State = MoveSwitching
	}
	if st.State == MoveSwitching {
		if err := m.switchOver(); err != nil {
			return fmt.Errorf("%w (the mailbox waits, tombstoned: run the move again to resume it, or roll it back)", err)
		}
		st.State = MovePublished
	}
	if st.State == MovePublished {
		if err := m.src.replaceSymlink(tombstoneMoved+m.volume, m.srcAt(moveLockDraft), m.srcAt(LockName)); err != nil {
			return fmt.Errorf("%w (the new mailbox is live: run the move again to finish it)", m.src.classify("mark the source moved", err))
		}
		if err := m.step(StepMarked); err != nil {
			return err
		}
	}
	if err := m.cleanup(); err != nil {
		return fmt.Errorf("%w (the new mailbox is live: run the move again to finish it)", err)
	}
	return m.step(StepCleaned)
}

// switchOver is step 2 from the tombstone on; each part is idempotent, so
// a resumed move runs it all again.
func (m *mover) switchOver() error {
	if err := m.renameTmpAway(); err != nil {
		return err
	}
	if err := m.step(StepTmpRenamed); err != nil {
		return err
	}
	m.drain()
	if err := m.step(StepDrained); err != nil {
		return err
	}
	if err := m.seal(); err != nil {
		return err
	}
	if err := m.step(StepSealed); err != nil {
		return err
	}
	if err := m.finalCopy(); err != nil {
		return err
	}
	if err := m.step(StepFinalCopied); err != nil {
		return err
	}
	if err := m.verify(); err != nil {
		return err
	}
	if err := m.step(StepVerified); err != nil {
		return err
	}
	if err := m.publish(); err != nil {
		return err
	}
	return m.step(StepPublished)
}

// --- step 1: copy rounds -------------------------------------------------

// msgEntry is a message file: its directory (new or cur) and name.
type msgEntry struct{ sub, name string }

func (e msgEntry) rel() string { return e.sub + "/" + e.name }

// listMessages reads new/ and cur/ under dir (a path on s) by base name.
// A base found in both (renamed to cur/ between the two readings) counts
// as in cur/. Missing directories are empty.
func listMessages(s *Store, dir string) (map[string]msgEntry, error) {
	out := make(map[string]msgEntry)
	for _, sub := range [...]string{"new", "cur"} {
		names, err := s.readDirNames(dir + "/" + sub)
		if isErrno(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			return nil, s.classify("list "+sub, err)
		}
		for _, n := range names {
			out[BaseName(n)] = msgEntry{sub: sub, name: n}
		}
	}
	return out, nil
}

func (m *mover) copyRounds() error {
	if err := m.ensureStaging(); err != nil {
		return err
	}
	for round := 0; round < m.o.Rounds; round++ {
		live, err := listMessages(m.src, m.srcDir.Path())
		if err != nil {
			return err
		}
		copied, err := m.mirror(m.srcDir.Path(), live, false)
		if err != nil {
			return err
		}
		m.report.Rounds++
		if copied == 0 {
			break
		}
	}
	return nil
}

// ensureStaging makes the staging Maildir (owned by the destination's
// owner, like a Maildir a delivery makes) if it is missing.
func (m *mover) ensureStaging() error {
	if err := m.dst.mkdir(m.dstAt(m.stagingName()), 0o700, m.dstMb, true); err != nil {
		return err
	}
	for _, sub := range maildirSubdirs {
		if err := m.dst.mkdir(m.dstAt(m.stagingName(), sub), 0o700, m.dstMb, true); err != nil {
			return err
		}
	}
	// The symlink rule for what we write into: none is followed.
	d, err := m.dstParent.OpenBeneath(m.stagingName(), trustNone)
	if err != nil {
		return m.dst.refusal(m.dstMb, "open the staging copy", err)
	}
	return d.Close()
}

// mirror makes the staging copy's new/ and cur/ hold the messages want
// (base name to entry, in the directory from on the source): a message
// the copy has under another name (a flag changed, moved to cur/) is
// renamed there, one it lacks is copied; with final, one it has that want
// lacks (deleted meanwhile) is removed. Without final, a message gone
// from the source by the time it is read was deleted or renamed meanwhile
// and is left to the next round.
func (m *mover) mirror(from string, want map[string]msgEntry, final bool) (copied int, err error) {
	staging := m.dstAt(m.stagingName())
	have, err := listMessages(m.dst, staging)
	if err != nil {
		return 0, err
	}
	bases := make([]string, 0, len(want))
	for b := range want {
		bases = append(bases, b)
	}
	slices.Sort(bases)
	for _, b := range bases {
		e := want[b]
		if h, ok := have[b]; ok {
			if h != e {
				if err := m.dst.retryStale(func() error { return m.dst.fs.Rename(staging+"/"+h.rel(), staging+"/"+e.rel()) }); err != nil {
					return copied, m.dst.classify("rename in the staging copy", err)
				}
			}
			continue
		}
		_, _, err := m.copyFile(from+"/"+e.rel(), staging, e.rel())
		if isErrno(err, syscall.ENOENT) && !final {
			continue
		}
		if err != nil {
			return copied, err
		}
		copied++
		m.report.Copied++
		if err := m.stepOnce(StepCopying); err != nil {
			return copied, err
		}
	}
	if final {
		for b, h := range have {
			if _, ok := want[b]; ok {
				continue
			}
			if err := m.dst.fs.Remove(staging + "/" + h.rel()); err != nil && !isErrno(err, syscall.ENOENT) {
				return copied, m.dst.classify("remove from the staging copy", err)
			}
		}
	}
	for _, sub := range [...]string{"new", "cur"} {
		if err := m.dst.retryStale(func() error { return m.dst.fs.SyncDir(staging + "/" + sub) }); err != nil {
			return copied, m.dst.classify("fsync the staging copy", err)
		}
	}
	return copied, nil
}

// copyFile copies the source file srcPath to staging/rel with the durable
// write path: written and fsynced under a fresh name in the staging tmp/,
// owned by the destination's owner, then renamed to its name, so that a
// name in the staging copy always holds a complete file. The caller
// fsyncs the directories. It returns the size and SHA-256 of what was
// read.
func (m *mover) copyFile(srcPath, staging, rel string) (int64, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	in, err := m.src.fs.OpenFile(srcPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, sum, m.src.classify("open source file", err)
	}
	defer in.Close()
	tmp := staging + "/tmp/" + m.dst.newBase() + ".move"
	out, err := m.dst.fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, sum, m.dst.classify("create staging file", err)
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			m.dst.fs.Remove(tmp)
		}
	}()
	if m.dst.chown && (m.dstMb.UID >= 0 || m.dstMb.GID >= 0) {
		if err := out.Chown(m.dstMb.UID, m.dstMb.GID); err != nil {
			return 0, sum, m.dst.classify("chown staging file", err)
		}
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), readerOf(in))
	if err != nil {
		return 0, sum, m.dst.classify("copy message", err)
	}
	if err := out.Sync(); err != nil {
		return 0, sum, m.dst.classify("fsync staging file", err)
	}
	if err := out.Close(); err != nil {
		ok = true // closed: only the name is left to remove
		m.dst.fs.Remove(tmp)
		return 0, sum, m.dst.classify("close staging file", err)
	}
	ok = true
	if err := m.dst.retryStale(func() error { return m.dst.fs.Rename(tmp, staging+"/"+rel) }); err != nil {
		m.dst.fs.Remove(tmp)
		return 0, sum, m.dst.classify("publish staging file", err)
	}
	copy(sum[:], h.Sum(nil))
	return n, sum, nil
}

// readerOf hides everything of a File but Read (io.Copy must not look
// for WriterTo on a test's wrapper).
func readerOf(f File) io.Reader { return struct{ io.Reader }{f} }

// --- step 2: the switch --------------------------------------------------

// takeTombstone takes S's session lock the normal way, waiting (bounded)
// while a POP3 session holds it, and replaces it with "moving:VOLUME" in
// one rename: from then on a login is told [IN-USE] and no session can
// delete or rename a message in S.
func (m *mover) takeTombstone() error {
	pinned, err := m.src.pinMaildir(m.srcMb, maildirSubdirs[:]...)
	if err != nil {
		return err
	}
	defer pinned.release()
	deadline := time.Now().Add(m.o.LockWait)
	for {
		l, err := m.src.acquireLock(pinned, m.o.LockStale, m.o.Owner)
		if err == nil {
			if err := l.replaceWith(tombstoneMoving+m.volume, pinned.at(moveLockDraft)); err != nil {
				l.Release()
				return m.src.classify("tombstone the source", err)
			}
			return nil
		}
		if failure.KindOf(err) != failure.InUse || !time.Now().Before(deadline) {
			return err
		}
		if err := m.step(StepLockWait); err != nil {
			return err
		}
		if err := m.sleep(); err != nil {
			return err
		}
	}
}

func (m *mover) sleep() error {
	t := time.NewTimer(m.o.Poll)
	defer t.Stop()
	select {
	case <-m.ctx.Done():
		return m.ctx.Err()
	case <-t.C:
		return nil
	}
}

// renameTmpAway renames S/tmp so that a delivery's open of tmp/ fails
// and it reads the tombstone. A delivery that opened tmp/ before keeps
// writing into the renamed directory and publishes into new/: the seal
// catches it.
func (m *mover) renameTmpAway() error {
	tmp, away := m.srcAt("tmp"), m.srcAt(moveTmpName)
	hasTmp, err := exists(m.src, tmp)
	if err != nil || !hasTmp {
		return m.src.classify("look for tmp", err)
	}
	hasAway, err := exists(m.src, away)
	if err != nil {
		return m.src.classify("look for the renamed tmp", err)
	}
	if hasAway {
		// Made again after the rename by a machine that does not know
		// tombstones: gather it into the renamed one.
		return m.gather(tmp, away)
	}
	err = m.src.retryStale(func() error { return m.src.fs.Rename(tmp, away) })
	if err != nil && mayHaveHappened(err) {
		if gone, _ := exists(m.src, tmp); !gone {
			if there, _ := exists(m.src, away); there {
				return nil
			}
		}
	}
	return m.src.classify("rename tmp away", err)
}

// gather renames every entry of dir into into, then removes dir.
func (m *mover) gather(dir, into string) error {
	names, err := m.src.readDirNames(dir)
	if err != nil {
		return m.src.classify("list "+dir, err)
	}
	for _, n := range names {
		if err := m.src.fs.Rename(dir+"/"+n, into+"/"+n); err != nil && !isErrno(err, syscall.ENOENT) {
			return m.src.classify("gather tmp", err)
		}
	}
	if err := m.src.fs.Remove(dir); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.src.classify("remove tmp", err)
	}
	return nil
}

// drain waits, up to DrainWait, until the renamed tmp/ holds no file a
// delivery may still publish (one younger than TmpMaxAge).
func (m *mover) drain() {
	deadline := time.Now().Add(m.o.DrainWait)
	for {
		n, err := m.inFlight()
		if err == nil && n == 0 {
			return
		}
		if !time.Now().Before(deadline) || m.sleep() != nil {
			m.report.DrainTimedOut = true
			m.src.log.Warn("deliveries still writing at a move's switch get a temporary failure", "maildir", m.srcMb.Path, "files", n, "err", err)
			return
		}
	}
}

func (m *mover) inFlight() (int, error) {
	away := m.srcAt(moveTmpName)
	names, err := m.src.readDirNames(away)
	if isErrno(err, syscall.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	cutoff := m.src.now().Add(-TmpMaxAge)
	n := 0
	for _, name := range names {
		info, err := m.src.fs.Lstat(away + "/" + name)
		if err == nil && info.Mode.IsRegular() && info.ModTime.After(cutoff) {
			n++
		}
	}
	return n, nil
}

// seal moves every message out of S/new and S/cur into the holding
// directory (same names) and removes the emptied directories. rmdir
// succeeds only on an empty directory, and once it has, no delivery can
// add a message (one holding the directory open gets ENOENT or ESTALE and
// a temporary failure): whatever a delivery published before is in the
// holding directory, which is fsynced before the rmdir.
func (m *mover) seal() error {
	if err := m.src.mkdir(m.srcAt(moveHoldName), 0o700, m.srcMb, true); err != nil {
		return err
	}
	for _, sub := range [...]string{"new", "cur"} {
		hold := m.srcAt(moveHoldName, sub)
		if err := m.src.mkdir(hold, 0o700, m.srcMb, true); err != nil {
			return err
		}
		if err := m.sealDir(sub, hold); err != nil {
			return err
		}
	}
	return nil
}

func (m *mover) sealDir(sub, hold string) error {
	for round := 0; round < maxSealRounds; round++ {
		d, err := m.srcDir.OpenBeneath(sub, trustNone)
		if isErrno(err, syscall.ENOENT) {
			return nil
		}
		if err != nil {
			return m.src.refusal(m.srcMb, "open "+sub, err)
		}
		err = m.emptyInto(d, hold)
		d.Close()
		if err != nil {
			return err
		}
		if err := m.src.retryStale(func() error { return m.src.fs.SyncDir(hold) }); err != nil {
			return m.src.classify("fsync the holding directory", err)
		}
		err = m.src.fs.Remove(m.srcAt(sub))
		if err == nil || isErrno(err, syscall.ENOENT) {
			return nil
		}
		// Not empty: a delivery published meanwhile. Go round again.
	}
	return failure.Temp("move", "could not seal the source (messages keep arriving)", fmt.Errorf("%s/%s", m.srcMb.Path, sub))
}

func (m *mover) emptyInto(d Dir, hold string) error {
	names, err := m.src.readDirNames(d.Path())
	if err != nil {
		return m.src.classify("list source", err)
	}
	for _, n := range names {
		err := m.src.retryStale(func() error { return m.src.fs.Rename(d.Path()+"/"+n, hold+"/"+n) })
		if err != nil && !isErrno(err, syscall.ENOENT) {
			return m.src.classify("seal the source", err)
		}
		if err := m.stepOnce(StepSealing); err != nil {
			return err
		}
	}
	return nil
}

// finalCopy makes the staging copy an exact mirror of the sealed source,
// and copies its top-level files (the legacy UIDL lists and nfsdrop's
// records of them, anything else an old server kept there); maildirsize
// is written anew: the source's quota definition with a recount of what
// was copied, exact where the source's may lag a delivery that had not
// appended to it yet.
func (m *mover) finalCopy() error {
	if err := m.ensureStaging(); err != nil {
		return err
	}
	hold := m.srcAt(moveHoldName)
	want, err := listMessages(m.src, hold)
	if err != nil {
		return err
	}
	if _, err := m.mirror(hold, want, true); err != nil {
		return err
	}
	files, err := m.topFiles()
	if err != nil {
		return err
	}
	staging := m.dstAt(m.stagingName())
	for _, n := range files {
		if _, _, err := m.copyFile(m.srcAt(n), staging, n); err != nil {
			return err
		}
		m.report.Copied++
	}
	folders, err := m.folders()
	if err != nil {
		return err
	}
	for _, f := range folders {
		// Copied whole each time: nfsdrop never writes into folders, and
		// a resumed move must not keep a half-copied one.
		if err := m.removeDstTree(staging + "/" + f); err != nil {
			return err
		}
		if err := m.copyTree(f); err != nil {
			return err
		}
	}
	if err := m.writeMaildirsize(); err != nil {
		return err
	}
	// What an interrupted copy left in the staging tmp/ (only the move
	// writes there) must not become the new Maildir's junk.
	if err := m.removeDstTree(staging + "/tmp"); err != nil {
		return err
	}
	if err := m.dst.mkdir(staging+"/tmp", 0o700, m.dstMb, true); err != nil {
		return err
	}
	return m.dst.retryStale(func() error { return m.dst.fs.SyncDir(staging) })
}

// topFiles lists the regular files at S's top level that go with the
// mailbox: not the lock (or its draft), not maildirsize (recounted), not
// other programs' lock files.
func (m *mover) topFiles() ([]string, error) {
	names, err := m.src.readDirNames(m.srcDir.Path())
	if err != nil {
		return nil, m.src.classify("list the source", err)
	}
	var out []string
	for _, n := range names {
		if n == LockName || n == moveLockDraft || n == maildirsizeName || strings.HasSuffix(n, ".lock") {
			continue
		}
		info, err := m.src.fs.Lstat(m.srcAt(n))
		if err != nil {
			return nil, m.src.classify("stat "+n, err)
		}
		if info.Mode.IsRegular() {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// folders lists S's subdirectories besides its own tmp/, new/, cur/ and
// the move's: Maildir++ folders (".Sent", ".Trash"), which an IMAP server
// may have made. They are copied whole at the final copy (stop IMAP for
// the user during a move: nfsdrop itself never writes there).
func (m *mover) folders() ([]string, error) {
	names, err := m.src.readDirNames(m.srcDir.Path())
	if err != nil {
		return nil, m.src.classify("list the source", err)
	}
	var out []string
	for _, n := range names {
		switch n {
		case "new", "cur", "tmp", moveTmpName, moveHoldName:
			continue
		}
		info, err := m.src.fs.Lstat(m.srcAt(n))
		if err != nil {
			return nil, m.src.classify("stat "+n, err)
		}
		if info.Mode.IsDir() {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// copyTree copies S's directory rel (a folder) into the staging copy:
// its regular files with the durable path, under their names.
func (m *mover) copyTree(rel string) error {
	staging := m.dstAt(m.stagingName())
	if err := m.dst.mkdir(staging+"/"+rel, 0o700, m.dstMb, true); err != nil {
		return err
	}
	names, err := m.src.readDirNames(m.srcAt(rel))
	if err != nil {
		return m.src.classify("list "+rel, err)
	}
	for _, n := range names {
		r := rel + "/" + n
		info, err := m.src.fs.Lstat(m.srcAt(r))
		if err != nil {
			return m.src.classify("stat "+r, err)
		}
		switch {
		case info.Mode.IsDir():
			err = m.copyTree(r)
		case info.Mode.IsRegular():
			_, _, err = m.copyFile(m.srcAt(r), staging, r)
			m.report.Copied++
		}
		if err != nil {
			return err
		}
	}
	return m.dst.retryStale(func() error { return m.dst.fs.SyncDir(staging + "/" + rel) })
}

// treeFiles appends the regular files below dir/rel on s (rel-relative
// names) to out.
func treeFiles(s *Store, dir, rel string, out *[]string) error {
	names, err := s.readDirNames(dir + "/" + rel)
	if err != nil {
		return s.classify("list "+rel, err)
	}
	for _, n := range names {
		r := rel + "/" + n
		info, err := s.fs.Lstat(dir + "/" + r)
		if err != nil {
			return s.classify("stat "+r, err)
		}
		switch {
		case info.Mode.IsDir():
			if err := treeFiles(s, dir, r, out); err != nil {
				return err
			}
		case info.Mode.IsRegular():
			*out = append(*out, r)
		}
	}
	return nil
}

func (m *mover) writeMaildirsize() error {
	data, _, err := m.src.readSmall(m.srcAt(maildirsizeName))
	if isErrno(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return m.src.classify("read maildirsize", err)
	}
	definition, _, _ := strings.Cut(string(data), "\n")
	staging := m.dstAt(m.stagingName())
	// The count recalculate makes: the Maildir and its folders.
	u, err := m.dst.countMaildir(staging)
	if err != nil {
		return m.dst.classify("count the staging copy", err)
	}
	content := fmt.Sprintf("%s\n%d %d\n", definition, u.Bytes, u.Messages)
	tmp := staging + "/tmp/" + m.dst.newBase() + ".maildirsize"
	if err := m.dst.writeNewFile(tmp, []byte(content), m.dstMb, true); err != nil {
		return m.dst.classify("write maildirsize", err)
	}
	if err := m.dst.retryStale(func() error { return m.dst.fs.Rename(tmp, staging+"/"+maildirsizeName) }); err != nil {
		m.dst.fs.Remove(tmp)
		return m.dst.classify("write maildirsize", err)
	}
	return nil
}

// verify compares the staging copy with the sealed source: the same
// message names in new/ and cur/, and every message and top-level file
// the same size and SHA-256. A file that differs is removed from the
// copy, so that running the move again copies it anew.
func (m *mover) verify() error {
	hold, staging := m.srcAt(moveHoldName), m.dstAt(m.stagingName())
	want, err := listMessages(m.src, hold)
	if err != nil {
		return err
	}
	have, err := listMessages(m.dst, staging)
	if err != nil {
		return err
	}
	if len(want) != len(have) {
		return failure.Temp("move", "verification failed: the copy has other messages", fmt.Errorf("%d in the source, %d in the copy", len(want), len(have)))
	}
	var rels []string
	for b, e := range want {
		if have[b] != e {
			return failure.Temp("move", "verification failed: a message is missing from the copy", fmt.Errorf("%s", e.rel()))
		}
		rels = append(rels, e.rel())
	}
	files, err := m.topFiles()
	if err != nil {
		return err
	}
	var total int64
	for _, rel := range rels {
		n, err := m.sameContent(m.srcAt(moveHoldName, rel), staging+"/"+rel)
		if err != nil {
			return err
		}
		total += n
	}
	folders, err := m.folders()
	if err != nil {
		return err
	}
	for _, f := range folders {
		var want, have []string
		if err := treeFiles(m.src, m.srcDir.Path(), f, &want); err != nil {
			return err
		}
		if err := treeFiles(m.dst, staging, f, &have); err != nil {
			return err
		}
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(want, have) {
			return failure.Temp("move", "verification failed: a folder differs", fmt.Errorf("%s", f))
		}
		files = append(files, want...)
	}
	for _, n := range files {
		if _, err := m.sameContent(m.srcAt(n), staging+"/"+n); err != nil {
			return err
		}
	}
	m.report.Messages, m.report.Bytes = len(rels), total
	return nil
}

// sameContent compares a source file with its copy; a copy that differs
// is removed.
func (m *mover) sameContent(srcPath, dstPath string) (int64, error) {
	n1, s1, err := hashFile(m.src, srcPath)
	if err != nil {
		return 0, m.src.classify("read source for verification", err)
	}
	n2, s2, err := hashFile(m.dst, dstPath)
	if err != nil && !isErrno(err, syscall.ENOENT) {
		return 0, m.dst.classify("read copy for verification", err)
	}
	if err == nil && n1 == n2 && s1 == s2 {
		return n1, nil
	}
	m.dst.fs.Remove(dstPath)
	return 0, failure.Temp("move", "verification failed: a copied file differs", fmt.Errorf("%s", ResolvedPath(dstPath)))
}

func hashFile(s *Store, path string) (int64, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := s.fs.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, readerOf(f))
	copy(sum[:], h.Sum(nil))
	return n, sum, err
}

// publish renames the staging copy to D: one call, after which D is
// complete for every machine.
func (m *mover) publish() error {
	from, to := m.dstAt(m.stagingName()), m.dstAt(m.dstName)
	err := m.dst.retryStale(func() error { return m.dst.fs.Rename(from, to) })
	if err != nil && mayHaveHappened(err) {
		left, _ := exists(m.dst, from)
		there, _ := exists(m.dst, to)
		if !left && there {
			err = nil
		}
	}
	if err != nil {
		return m.dst.classify("publish the destination", err)
	}
	return m.dst.classify("fsync the destination's parent", m.dst.retryStale(func() error { return m.dst.fs.SyncDir(m.dstParent.Path()) }))
}

// --- step 3: cleanup -----------------------------------------------------

// cleanup removes everything of S but the tombstone. new/, cur/ or tmp/
// found again would hold mail a machine that does not know tombstones
// delivered after the switch: that is reported, not removed.
func (m *mover) cleanup() error {
	for _, sub := range maildirSubdirs {
		there, err := exists(m.src, m.srcAt(sub))
		if err != nil {
			return m.src.classify("look for "+sub, err)
		}
		if there {
			return failure.Temp("move", "the source has "+sub+"/ again (a machine without tombstone support delivered there?): left for the administrator", nil)
		}
	}
	for _, n := range [...]string{moveHoldName, moveTmpName} {
		if err := m.removeTree(m.srcAt(n)); err != nil {
			return err
		}
	}
	names, err := m.src.readDirNames(m.srcDir.Path())
	if err != nil {
		return m.src.classify("list the source", err)
	}
	for _, n := range names {
		if n == LockName || n == moveRunningName {
			continue
		}
		if err := m.removeTree(m.srcAt(n)); err != nil {
			return err
		}
	}
	return nil
}

// removeTree removes path and, if it is a directory (not a link to one),
// everything below it.
func (m *mover) removeTree(path string) error {
	info, err := m.src.fs.Lstat(path)
	if isErrno(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return m.src.classify("stat "+path, err)
	}
	if info.Mode.IsDir() {
		names, err := m.src.readDirNames(path)
		if err != nil && !isErrno(err, syscall.ENOENT) {
			return m.src.classify("list "+path, err)
		}
		for _, n := range names {
			if err := m.removeTree(path + "/" + n); err != nil {
				return err
			}
		}
	}
	if err := m.src.fs.Remove(path); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.src.classify("remove "+ResolvedPath(path), err)
	}
	return m.stepOnce(StepCleaning)
}

// --- rollback ------------------------------------------------------------

func (m *mover) rollback() error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if st.Volume != "" && m.volume != "" && st.Volume != m.volume {
		return failure.Perm("move rollback", "the move under way is to another volume", fmt.Errorf("to volume %s", st.Volume))
	}
	switch st.State {
	case MoveNone:
		return nil
	case MoveCopying, MoveSwitching:
	default:
		return failure.Perm("move rollback", "the new mailbox is live already: finish the move (run it again) and move the mailbox back", fmt.Errorf("state %s", st.State))
	}
	if err := m.removeDstTree(m.dstAt(m.stagingName())); err != nil {
		return err
	}
	if err := m.src.fs.Remove(m.srcAt(moveLockDraft)); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.src.classify("remove the tombstone draft", err)
	}
	if st.State == MoveCopying {
		return nil
	}
	if err := m.unseal(); err != nil {
		return err
	}
	if err := m.restoreTmp(); err != nil {
		return err
	}
	// Last: until now every machine kept away.
	if err := m.src.retryStale(func() error { return m.src.fs.Remove(m.srcAt(LockName)) }); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.src.classify("remove the tombstone", err)
	}
	return nil
}

// unseal puts the held messages back into S/new and S/cur.
func (m *mover) unseal() error {
	for _, sub := range [...]string{"new", "cur"} {
		hold := m.srcAt(moveHoldName, sub)
		if err := m.src.mkdir(m.srcAt(sub), 0o700, m.srcMb, true); err != nil {
			return err
		}
		names, err := m.src.readDirNames(hold)
		if isErrno(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			return m.src.classify("list the holding directory", err)
		}
		d, err := m.srcDir.OpenBeneath(sub, trustNone)
		if err != nil {
			return m.src.refusal(m.srcMb, "open "+sub, err)
		}
		for _, n := range names {
			if err := m.src.fs.Rename(hold+"/"+n, d.Path()+"/"+n); err != nil && !isErrno(err, syscall.ENOENT) {
				d.Close()
				return m.src.classify("put a message back", err)
			}
		}
		err = m.src.retryStale(func() error { return m.src.fs.SyncDir(d.Path()) })
		d.Close()
		if err != nil {
			return m.src.classify("fsync "+sub, err)
		}
		if err := m.src.fs.Remove(hold); err != nil && !isErrno(err, syscall.ENOENT) {
			return m.src.classify("remove the holding directory", err)
		}
	}
	if err := m.src.fs.Remove(m.srcAt(moveHoldName)); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.src.classify("remove the holding directory", err)
	}
	return nil
}

func (m *mover) restoreTmp() error {
	tmp, away := m.srcAt("tmp"), m.srcAt(moveTmpName)
	hasAway, err := exists(m.src, away)
	if err != nil {
		return m.src.classify("look for the renamed tmp", err)
	}
	if !hasAway {
		return m.src.mkdir(tmp, 0o700, m.srcMb, true)
	}
	if hasTmp, err := exists(m.src, tmp); err != nil || hasTmp {
		if err != nil {
			return m.src.classify("look for tmp", err)
		}
		return m.gather(away, tmp)
	}
	if err := m.src.retryStale(func() error { return m.src.fs.Rename(away, tmp) }); err != nil {
		if there, _ := exists(m.src, tmp); !there {
			return m.src.classify("put tmp back", err)
		}
	}
	return nil
}

// removeDstTree removes the staging copy (never a link: the symlink rule
// was applied when it was made).
func (m *mover) removeDstTree(path string) error {
	info, err := m.dst.fs.Lstat(path)
	if isErrno(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return m.dst.classify("stat "+path, err)
	}
	if info.Mode.IsDir() {
		names, err := m.dst.readDirNames(path)
		if err != nil {
			return m.dst.classify("list the staging copy", err)
		}
		for _, n := range names {
			if err := m.removeDstTree(path + "/" + n); err != nil {
				return err
			}
		}
	}
	if err := m.dst.fs.Remove(path); err != nil && !isErrno(err, syscall.ENOENT) {
		return m.dst.classify("remove the staging copy", err)
	}
	return nil
}
