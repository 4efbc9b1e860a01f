package store

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// attackerUID owns the symlinks a user could make in a Maildir they own.
const attackerUID = 4242

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		// Making a symlink owned by another user needs root; the tests
		// run as root (COMMON rules), so this only helps a developer's
		// unprivileged run.
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to make a symlink owned by another user; CI runs the tests as root")
		}
		t.Skip("needs root to make a symlink owned by another user")
	}
}

// syncBuffer is a log sink safe for the store's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func withLog(buf *syncBuffer) func(*Options) {
	return func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(buf, nil)) }
}

// userSymlink replaces the directory at path by a symlink to target owned
// by attackerUID, keeping the directory as path+".orig": what a user who
// owns the directory above (or the Maildir, for new/) can do at any time.
func userSymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.Rename(path, path+".orig"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, attackerUID, attackerUID); err != nil {
		t.Fatal(err)
	}
}

// Finding 6: an administrator's link above new Maildirs (a domain moved
// to another volume) is followed: the first mail to a new user there is
// delivered, into a Maildir made under the link's target.
func TestDeliverThroughAdminDomainSymlink(t *testing.T) {
	s, root := newTestStore(t, nil)
	if err := os.MkdirAll(filepath.Join(root, "vol2", "example.org"), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("vol2/example.org", filepath.Join(root, "example.org")); err != nil {
		t.Fatal(err)
	}
	mb := mailbox(root, "newuser")
	msg := []byte("Subject: first\n\nhello\n")
	if _, err := s.Deliver(mb, bytes.NewReader(msg)); err != nil {
		t.Fatalf("first delivery under a root-owned in-root domain symlink: %v", err)
	}
	real := filepath.Join(root, "vol2", "example.org", "newuser", "Maildir")
	if fi, err := os.Lstat(real); err != nil || !fi.IsDir() {
		t.Fatalf("Maildir not made under vol2: %v", err)
	}
	checkOutcome(t, Mailbox{Path: real}, true, msg)
	// And POP3 reads it through the same link.
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	if n := len(ss.Entries()); n != 1 {
		t.Errorf("session lists %d messages, want 1", n)
	}
}

// An absolute link is followed too when it stays inside the mail root; one
// leading out of it is refused even when root owns it.
func TestAdminSymlinkMustStayInRoot(t *testing.T) {
	s, root := newTestStore(t, nil)
	os.MkdirAll(filepath.Join(root, "vol2", "example.org"), 0o711)
	if err := os.Symlink(filepath.Join(root, "vol2", "example.org"), filepath.Join(root, "example.org")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(mailbox(root, "abs"), strings.NewReader("x\n")); err != nil {
		t.Fatalf("absolute in-root link: %v", err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "other.org")); err != nil {
		t.Fatal(err)
	}
	mb := Mailbox{Path: filepath.Join(root, "other.org", "u", "Maildir"), UID: -1, GID: -1}
	_, err := s.Deliver(mb, strings.NewReader("x\n"))
	if err == nil || !strings.Contains(err.Error(), "unsafe symlink") {
		t.Fatalf("link out of the mail root: want refusal, got %v", err)
	}
	if names := listDir(t, outside); len(names) != 0 {
		t.Errorf("created outside the mail root: %v", names)
	}
}

// Finding 11c: a Maildir with tmp/ but without new/ (and cur/) is
// completed by the next delivery instead of deferring it forever.
func TestDeliverRepairsMaildirWithoutNew(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "half")
	if err := os.MkdirAll(filepath.Join(mb.Path, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: repair\n\nx\n")
	if _, err := s.Deliver(mb, bytes.NewReader(msg)); err != nil {
		t.Fatalf("delivery into a Maildir without new/: %v", err)
	}
	checkOutcome(t, mb, true, msg)
	if fi, err := os.Stat(filepath.Join(mb.Path, "cur")); err != nil || !fi.IsDir() {
		t.Errorf("cur/ not made: %v", err)
	}
}

// Security: a user who can replace their Maildir (owning the directory
// above it) or its new/ (owning the Maildir) by a symlink to another
// user's must not get mail written there. Swapped before the delivery
// resolves the Maildir: refused, with a log line naming the link.
func TestDeliverRefusesUserSymlinkToOtherMailbox(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name string
		swap func(t *testing.T, alice, bob Mailbox)
	}{
		{"maildir", func(t *testing.T, alice, bob Mailbox) {
			userSymlink(t, alice.Path, "../bob/Maildir")
		}},
		{"new", func(t *testing.T, alice, bob Mailbox) {
			userSymlink(t, filepath.Join(alice.Path, "new"), filepath.Join(bob.Path, "new"))
		}},
		{"directory above", func(t *testing.T, alice, bob Mailbox) {
			userSymlink(t, filepath.Dir(alice.Path), "bob")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			s, root := newTestStore(t, nil, withLog(&logs))
			alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
			deliverN(t, s, alice, 1)
			deliverN(t, s, bob, 1)
			tc.swap(t, alice, bob) // after the user lookup, before delivery
			_, err := s.Deliver(alice, strings.NewReader("Subject: for alice\n\nx\n"))
			if err == nil {
				t.Fatal("delivery through a user-owned symlink was accepted")
			}
			if k := failure.KindOf(err); k != failure.Temporary || !strings.Contains(err.Error(), "unsafe symlink") {
				t.Errorf("want a temporary 'unsafe symlink' refusal, got %v (%v)", err, k)
			}
			if n := countNew(t, bob); n != 1 {
				t.Errorf("bob's new/ holds %d messages, want his 1", n)
			}
			if tmp := listDir(t, filepath.Join(bob.Path, "tmp")); len(tmp) != 0 {
				t.Errorf("written into bob's tmp/: %v", tmp)
			}
			if !strings.Contains(logs.String(), "mailbox path refused: unsafe symlink") {
				t.Errorf("no log line for the refusal; log:\n%s", logs.String())
			}
		})
	}
}

// The swap can also come after the Maildir was resolved, between the
// check and the use: the delivery then goes on in the directory it
// resolved (held open), never into the other mailbox.
func TestDeliverSwapAfterResolutionStaysInResolvedMaildir(t *testing.T) {
	needRoot(t)
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
	deliverN(t, s, alice, 1)
	deliverN(t, s, bob, 1)
	var once sync.Once
	ffs.hook = func(op, path string, real func() error) error {
		if op == "open" && strings.HasPrefix(path, filepath.Join(alice.Path, "tmp")+"/") {
			once.Do(func() { userSymlink(t, alice.Path, "../bob/Maildir") })
		}
		return real()
	}
	msg := []byte("Subject: for alice\n\nx\n")
	_, err := s.Deliver(alice, bytes.NewReader(msg))
	ffs.hook = nil
	if err != nil {
		t.Fatalf("delivery into the Maildir resolved before the swap: %v", err)
	}
	if n := countNew(t, bob); n != 1 {
		t.Errorf("bob's new/ holds %d messages, want his 1", n)
	}
	if n := countNew(t, Mailbox{Path: alice.Path + ".orig"}); n != 2 {
		t.Errorf("alice's Maildir holds %d messages, want 2", n)
	}
}

// POP3: a session must neither list nor delete another user's mail
// through a symlink swapped in before login, nor through one swapped in
// after the session resolved the Maildir.
func TestOpenSessionRefusesUserSymlinkToOtherMailbox(t *testing.T) {
	needRoot(t)
	var logs syncBuffer
	s, root := newTestStore(t, nil, withLog(&logs))
	alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
	deliverN(t, s, alice, 1)
	deliverN(t, s, bob, 2)
	userSymlink(t, alice.Path, "../bob/Maildir")
	ss, err := s.OpenSession(alice, sessOpts)
	if err == nil {
		ss.Close()
		t.Fatalf("session opened through a user-owned symlink, listing %d messages", len(ss.Entries()))
	}
	if !strings.Contains(err.Error(), "unsafe symlink") {
		t.Errorf("want an 'unsafe symlink' refusal, got %v", err)
	}
	if _, err := os.Lstat(filepath.Join(bob.Path, LockName)); !os.IsNotExist(err) {
		t.Errorf("a lock was made in bob's Maildir: %v", err)
	}
	if !strings.Contains(logs.String(), "mailbox path refused: unsafe symlink") {
		t.Errorf("no log line for the refusal; log:\n%s", logs.String())
	}
}

func TestOpenSessionSwapAfterResolutionDeletesNothingElsewhere(t *testing.T) {
	needRoot(t)
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
	deliverN(t, s, alice, 1)
	deliverN(t, s, bob, 2)
	// Bob's messages under alice's names: a DELE by name through the
	// swapped path would remove them.
	for _, name := range listDir(t, filepath.Join(alice.Path, "new")) {
		os.WriteFile(filepath.Join(bob.Path, "new", name), []byte("bob's\n"), 0o600)
	}
	var once sync.Once
	ffs.hook = func(op, path string, real func() error) error {
		if op == "symlink" && strings.HasSuffix(path, LockName) {
			once.Do(func() { userSymlink(t, alice.Path, "../bob/Maildir") })
		}
		return real()
	}
	ss, err := s.OpenSession(alice, sessOpts)
	ffs.hook = nil
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ss.Entries()); n != 1 {
		t.Errorf("session lists %d messages, want alice's 1", n)
	}
	all := make([]int, len(ss.Entries()))
	for i := range all {
		all[i] = i
	}
	if err := ss.Commit(all, nil); err != nil {
		t.Fatal(err)
	}
	if n := countNew(t, bob); n != 3 {
		t.Errorf("bob's new/ holds %d files, want 3", n)
	}
	if n := countNew(t, Mailbox{Path: alice.Path + ".orig"}); n != 0 {
		t.Errorf("alice's Maildir still holds %d messages", n)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	names, err := os.ReadDir(procFD)
	if err != nil {
		t.Fatal(err)
	}
	return len(names)
}

// Every pinned directory is released: after deliveries to one and to
// several recipients, restaged copies, copies with a prefix, the rename
// fallback, POP3 sessions and refusals, no descriptor is left open (a
// leaked one would also keep a number that later names another file).
func TestPinsAreReleased(t *testing.T) {
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
	deliverN(t, s, alice, 1)
	before := openFDs(t)
	deliverN(t, s, alice, 2)
	for _, noLinks := range []bool{false, true} {
		if noLinks {
			ffs.hook = func(op, path string, real func() error) error {
				if op == "link" {
					return syscall.EPERM
				}
				return real()
			}
		}
		st, err := s.Stage(alice, strings.NewReader("Subject: x\n\nbody\n"))
		if err != nil {
			t.Fatal(err)
		}
		for _, mb := range []Mailbox{bob, alice} {
			if _, err := st.Deliver(mb); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.DeliverWithPrefix(bob, []byte("X-Test: 1\n")); err != nil {
			t.Fatal(err)
		}
		re, err := st.Restage([]byte("X-Scan: clean\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := re.Deliver(alice); err != nil {
			t.Fatal(err)
		}
		re.Discard()
		st.Discard()
		ffs.hook = nil
	}
	// Several recipients: staged in the spool; the original is discarded
	// before its restaged copy, which must keep the spool's tmp/ open.
	st, err := s.StageFor([]Mailbox{alice, bob}, strings.NewReader("Subject: y\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	re, err := st.Restage([]byte("X-Scan: clean\n"))
	if err != nil {
		t.Fatal(err)
	}
	st.Discard()
	for _, mb := range []Mailbox{alice, bob} {
		if _, err := re.Deliver(mb); err != nil {
			t.Fatal(err)
		}
	}
	re.Discard()
	ss, err := s.OpenSession(bob, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.Commit([]int{0}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(Mailbox{Path: filepath.Join(root, "file", "Maildir")}, strings.NewReader("x\n")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(root, "file"))
	os.WriteFile(filepath.Join(root, "file"), nil, 0o600)
	if _, err := s.Deliver(Mailbox{Path: filepath.Join(root, "file", "Maildir")}, strings.NewReader("x\n")); err == nil {
		t.Fatal("delivery below a file was accepted")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}

// The walk that stands in for openat2 on kernels without it (ENOSYS)
// resolves a plain path, reports a missing component as ENOENT and a file
// as ENOTDIR, and never leaves the root through "..".
func TestWalkBeneathWithoutOpenat2(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "a", "b"), 0o700)
	os.WriteFile(filepath.Join(root, "f"), nil, 0o600)
	os.Symlink("../..", filepath.Join(root, "a", "up"))
	d, err := OSFS{}.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rootFD := d.(*osDir).fd
	fd, err := walkBeneath(rootFD, root, "a/b", os.Geteuid())
	if err != nil {
		t.Fatalf("plain path: %v", err)
	}
	syscall.Close(fd)
	if _, err := walkBeneath(rootFD, root, "a/missing", os.Geteuid()); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing component: %v", err)
	}
	if _, err := walkBeneath(rootFD, root, "f/x", os.Geteuid()); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("file on the way: %v", err)
	}
	var unsafe *UnsafePathError
	if _, err := walkBeneath(rootFD, root, "a/up/x", os.Geteuid()); !errors.As(err, &unsafe) {
		t.Errorf("link out of the root: %v", err)
	}
}

// The spool is the daemon's own directory: a symlink in its place (or in
// place of its tmp/) is never followed, not even a root-owned one that
// stays in the mail root, and nothing is staged where it leads.
func TestSpoolSymlinkRefused(t *testing.T) {
	for _, which := range []string{SpoolName, filepath.Join(SpoolName, "tmp")} {
		t.Run(which, func(t *testing.T) {
			s, root := newTestStore(t, nil)
			boxes := []Mailbox{mailbox(root, "s1"), mailbox(root, "s2")}
			elsewhere := filepath.Join(root, "elsewhere")
			if err := os.MkdirAll(filepath.Join(elsewhere, "tmp"), 0o700); err != nil {
				t.Fatal(err)
			}
			target := elsewhere
			if which != SpoolName {
				os.Mkdir(filepath.Join(root, SpoolName), 0o700)
				target = filepath.Join(elsewhere, "tmp")
			}
			if err := os.Symlink(target, filepath.Join(root, which)); err != nil {
				t.Fatal(err)
			}
			st, err := s.StageFor(boxes, strings.NewReader("Subject: x\n\nbody\n"))
			if err == nil {
				st.Discard()
				t.Fatal("staged through a symlinked spool")
			}
			if failure.KindOf(err) != failure.Temporary {
				t.Errorf("symlinked spool: %v, want a temporary failure", err)
			}
			if n := listDir(t, filepath.Join(elsewhere, "tmp")); len(n) != 0 {
				t.Errorf("staged where the symlink leads: %v", n)
			}
		})
	}
}

// The spool's tmp/ stays the one pinned at staging: a spool swapped
// afterwards (renamed away, a new one made) changes nothing for the
// message staged in it, which every recipient still gets.
func TestSpoolSwapAfterStagingStaysInPinnedSpool(t *testing.T) {
	s, root := newTestStore(t, nil)
	boxes := []Mailbox{mailbox(root, "s1"), mailbox(root, "s2")}
	st, err := s.StageFor(boxes, strings.NewReader("Subject: x\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	spool := filepath.Join(root, SpoolName)
	if err := os.Rename(spool, spool+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(spool, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, mb := range boxes {
		if _, err := st.Deliver(mb); err != nil {
			t.Fatal(err)
		}
	}
	st.Discard()
	for _, mb := range boxes {
		if n := countNew(t, mb); n != 1 {
			t.Errorf("%s: %d messages, want 1", mb.Path, n)
		}
	}
	if n := listDir(t, filepath.Join(spool+".old", "tmp")); len(n) != 0 {
		t.Errorf("pinned spool tmp/ after Discard: %v", n)
	}
}

// The frozen legacy UIDL record and the lock are written through the
// Maildir the session pinned: a Maildir swapped for a link to another
// mailbox after login gets neither.
func TestOpenSessionSwapAfterResolutionRecordsUIDLsInPinnedMaildir(t *testing.T) {
	needRoot(t)
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
	legacyMaildir(t, s, alice, "dovecot-uidlist")
	deliverN(t, s, bob, 1)
	var once sync.Once
	ffs.hook = func(op, path string, real func() error) error {
		if op == "symlink" && strings.HasSuffix(path, LockName) {
			once.Do(func() { userSymlink(t, alice.Path, "../bob/Maildir") })
		}
		return real()
	}
	opts := sessOpts
	opts.UIDLFormat = UIDLDovecot
	ss, err := s.OpenSession(alice, opts)
	ffs.hook = nil
	if err != nil {
		t.Fatal(err)
	}
	record := snapshotName(UIDLDovecot)
	if _, err := os.Lstat(filepath.Join(alice.Path+".orig", record)); err != nil {
		t.Errorf("no UIDL record in the pinned Maildir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(bob.Path, record)); !os.IsNotExist(err) {
		t.Errorf("UIDL record written into bob's Maildir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(alice.Path+".orig", LockName)); err != nil {
		t.Errorf("no lock in the pinned Maildir: %v", err)
	}
	ss.Close()
	if _, err := os.Lstat(filepath.Join(alice.Path+".orig", LockName)); !os.IsNotExist(err) {
		t.Errorf("lock left in the pinned Maildir after Close: %v", err)
	}
}

// Deliveries share a directory fsync only when they hold the very same
// directory: two pins of one new/ have one key, the new/ of a Maildir
// made again under the same path another.
func TestSyncKeyIsTheDirectory(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "k")
	first, err := s.pinMaildir(mb, "tmp", "new")
	if err != nil {
		t.Fatal(err)
	}
	defer first.release()
	again, err := s.pinMaildir(mb, "tmp", "new")
	if err != nil {
		t.Fatal(err)
	}
	defer again.release()
	key := func(mb Mailbox) string { k, _, _ := syncKey(mb, "new"); return k }
	if a, b := key(first), key(again); a != b {
		t.Errorf("two pins of one new/: keys %q and %q", a, b)
	}
	if err := os.Rename(mb.Path, mb.Path+".old"); err != nil {
		t.Fatal(err)
	}
	remade, err := s.pinMaildir(mb, "tmp", "new")
	if err != nil {
		t.Fatal(err)
	}
	defer remade.release()
	if a, b := key(first), key(remade); a == b {
		t.Errorf("new/ of a Maildir made again has the old one's key %q", a)
	}
}

// Dir.ID is the directory's device, inode and type, and nothing else (the
// attributes an NFS client would have to revalidate are left zero).
func TestDirIDIsIdentityOnly(t *testing.T) {
	dir := t.TempDir()
	d, err := OSFS{}.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id, err := d.ID()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if id.Dev != uint64(st.Dev) || id.Ino != st.Ino || !id.Mode.IsDir() {
		t.Errorf("ID %+v, want dev %d ino %d, a directory", id, st.Dev, st.Ino)
	}
	if id.Nlink != 0 || id.Size != 0 || !id.ModTime.IsZero() || id.Mode.Perm() != 0 {
		t.Errorf("ID carries more than the identity: %+v", id)
	}
}
