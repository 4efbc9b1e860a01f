package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// The link-count fallback of verifyPublished (dst cannot be stat'ed) must
// count only this link: after two recipients were linked, a third link
// that answered ENOENT without happening is a failure, not a success
// vouched for by the other recipients' links.
func TestLinkCountFallbackCountsOnlyThisLink(t *testing.T) {
	for _, tc := range []struct {
		name     string
		linkDone bool // the third link really happened, its reply was lost
		acked    bool
	}{
		{name: "ENOENT, link not made", linkDone: false, acked: false},
		{name: "ENOENT after the link was made, target not visible yet", linkDone: true, acked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ffs := &faultFS{}
			s, root := newTestStore(t, ffs)
			boxes := []Mailbox{mailbox(root, "l1"), mailbox(root, "l2"), mailbox(root, "l3")}
			st, err := s.Stage(boxes[0], bytes.NewReader(testMessage))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Discard()
			for _, mb := range boxes[:2] {
				if _, err := st.Deliver(mb); err != nil {
					t.Fatal(err)
				}
			}
			third := filepath.Join(boxes[2].Path, "new") + "/"
			if err := s.EnsureMaildir(boxes[2]); err != nil {
				t.Fatal(err)
			}
			ffs.hook = func(op, path string, real func() error) error {
				if !strings.HasPrefix(path, third) {
					return real()
				}
				switch op {
				case "link":
					if tc.linkDone {
						if err := real(); err != nil {
							return err
						}
					}
					return &os.LinkError{Op: "link", New: path, Err: syscall.ENOENT}
				case "lstat":
					// A stale negative lookup: the target cannot be seen.
					return &os.PathError{Op: "lstat", Path: path, Err: syscall.ENOENT}
				}
				return real()
			}
			_, err = st.Deliver(boxes[2])
			ffs.hook = nil
			if (err == nil) != tc.acked {
				t.Fatalf("acknowledged=%v, want %v (err %v)", err == nil, tc.acked, err)
			}
			if !tc.acked && failure.KindOf(err) != failure.Temporary {
				t.Errorf("want a temporary failure, got %v", err)
			}
			if n := listDir(t, filepath.Join(boxes[2].Path, "new")); len(n) != map[bool]int{true: 1, false: 0}[tc.acked] {
				t.Errorf("third recipient's new/: %v", n)
			}
		})
	}
}

// Two recipients with one Maildir (user+a and user+b): the second gets
// the first one's delivery. Its directory fsync cannot fail and withdraw
// the file the first was answered for, and maildirsize counts one message.
func TestSameMaildirDeliveredOnce(t *testing.T) {
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	mb := mailbox(root, "same")
	mb.Quota = Quota{Messages: 10}
	other := mailbox(root, "other")
	st, err := s.Stage(mb, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	first, err := st.Deliver(mb)
	if err != nil {
		t.Fatal(err)
	}
	ffs.hook = func(op, path string, real func() error) error {
		if op == "syncdir" && strings.HasPrefix(path, mb.Path) {
			return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}
		}
		return real()
	}
	again := mb
	again.Path += "/" // the same Maildir, spelled differently
	second, err := st.Deliver(again)
	if err != nil || second.Key != first.Key {
		t.Fatalf("second recipient of the same Maildir: %+v %v, want %+v", second, err, first)
	}
	if _, err := st.Deliver(other); err != nil {
		t.Fatal(err)
	}
	ffs.hook = nil
	st.Discard()
	checkOutcome(t, mb, true, testMessage)
	checkOutcome(t, other, true, testMessage)
	if u, _, err := s.QuotaUsage(mb); err != nil || u.Messages != 1 {
		t.Errorf("maildirsize: %+v %v, want 1 message", u, err)
	}
}

// The same Maildir reached through another path (a symlink: the cleaned
// paths differ): the link answers EEXIST for our inode. If the directory
// fsync then fails, the answer is a temporary failure, but the file the
// first recipient was answered for stays.
func TestAliasedMaildirNeverWithdrawsAnAcknowledgedFile(t *testing.T) {
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	mb := mailbox(root, "real")
	st, err := s.Stage(mb, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	if _, err := st.Deliver(mb); err != nil {
		t.Fatal(err)
	}
	alias := filepath.Join(root, "example.org", "alias")
	if err := os.Symlink(filepath.Dir(mb.Path), alias); err != nil {
		t.Fatal(err)
	}
	ffs.hook = func(op, path string, real func() error) error {
		if op == "syncdir" {
			return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}
		}
		return real()
	}
	_, err = st.Deliver(Mailbox{Path: filepath.Join(alias, "Maildir"), UID: -1, GID: -1})
	ffs.hook = nil
	if failure.KindOf(err) != failure.Temporary {
		t.Fatalf("aliased Maildir with a failed fsync: %v, want a temporary failure", err)
	}
	st.Discard()
	checkOutcome(t, mb, true, testMessage)
}

// A message for several recipients is staged in the spool (made 0700 on
// first use), which no mailbox may use, and whose leftovers the sweeper
// removes like those of tmp/.
func TestSpool(t *testing.T) {
	now := time.Now()
	s, root := newTestStore(t, nil, func(o *Options) { o.Now = func() time.Time { return now } })
	boxes := []Mailbox{mailbox(root, "s1"), mailbox(root, "s2")}
	st, err := s.StageFor(boxes, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	spoolTmp := filepath.Join(root, SpoolName, "tmp")
	if n := listDir(t, spoolTmp); len(n) != 1 {
		t.Fatalf("spool tmp/ holds %v, want the staged file", n)
	}
	for _, dir := range []string{filepath.Dir(spoolTmp), spoolTmp} {
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want mode 0700", dir, fi, err)
		}
	}
	for _, mb := range boxes {
		if _, err := st.Deliver(mb); err != nil {
			t.Fatal(err)
		}
	}
	st.Discard()
	for _, mb := range boxes {
		checkOutcome(t, mb, true, testMessage)
	}
	if n := listDir(t, spoolTmp); len(n) != 0 {
		t.Errorf("spool tmp/ after Discard: %v", n)
	}

	for _, p := range []string{filepath.Join(root, SpoolName), filepath.Join(root, SpoolName, "u", "Maildir")} {
		_, err := s.Deliver(Mailbox{Path: p, UID: -1, GID: -1}, bytes.NewReader(testMessage))
		if failure.KindOf(err) != failure.Permanent {
			t.Errorf("mailbox %s in the spool: %v, want a permanent failure", p, err)
		}
	}

	old := filepath.Join(spoolTmp, "1.abandoned")
	os.WriteFile(old, []byte("partial"), 0o600)
	s.now = func() time.Time { return now.Add(TmpMaxAge + time.Hour) }
	removed, _, err := s.SweepTree(root, TmpMaxAge, false)
	if err != nil || removed != 1 {
		t.Fatalf("SweepTree: removed %d, %v", removed, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("abandoned spool file not swept: %v", err)
	}
}

// When the spooled file cannot be given to the first recipient's owner
// (that owner is over its filer quota), it stays unowned and every
// recipient gets a copy of its own: the first recipient's trouble stays
// its own.
func TestSpoolChownFailsEveryoneGetsACopy(t *testing.T) {
	testenv.RequireRoot(t)
	ffs := &faultFS{}
	yes := true
	s, root := newTestStore(t, ffs, func(o *Options) { o.Chown = &yes })
	boxes := []Mailbox{mailbox(root, "q1"), mailbox(root, "q2"), mailbox(root, "q3")}
	for i := range boxes {
		boxes[i].UID, boxes[i].GID = 3001+i%2, 3001+i%2 // q1 and q3 share an owner
	}
	spool := filepath.Join(root, SpoolName) + "/"
	ffs.hook = func(op, path string, real func() error) error {
		if op == "chown" && (strings.HasPrefix(path, spool) || strings.HasPrefix(path, boxes[0].Path+"/")) {
			return &os.PathError{Op: "chown", Path: path, Err: syscall.EDQUOT}
		}
		// A file created as that owner (a copy in its own tmp/, born
		// theirs: FS.CreateAs) is refused by the same quota.
		if op == "open" && strings.HasPrefix(path, boxes[0].Path+"/tmp/") {
			return &os.PathError{Op: "open", Path: path, Err: syscall.EDQUOT}
		}
		return real()
	}
	st, err := s.StageFor(boxes, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatalf("a chown failure for the first owner failed the stage: %v", err)
	}
	if _, err := st.Deliver(boxes[0]); failure.KindOf(err) != failure.OverQuota {
		t.Errorf("first recipient: %v, want its own over-quota failure", err)
	}
	for _, mb := range boxes[1:] {
		d, err := st.Deliver(mb)
		if err != nil {
			t.Fatalf("%s: %v", mb.Path, err)
		}
		if d.Linked {
			t.Errorf("%s got a link of an unowned file", mb.Path)
		}
		fi, err := os.Stat(filepath.Join(mb.Path, "new", d.Key))
		if err != nil {
			t.Fatal(err)
		}
		if sys := fi.Sys().(*syscall.Stat_t); int(sys.Uid) != mb.UID || sys.Nlink != 1 {
			t.Errorf("%s: owner %d nlink %d, want %d and 1", mb.Path, sys.Uid, sys.Nlink, mb.UID)
		}
	}
	ffs.hook = nil
	st.Discard()
	checkOutcome(t, boxes[0], false, nil)
	for _, mb := range boxes[1:] {
		checkOutcome(t, mb, true, testMessage)
	}
}

// On a filesystem without hard links the staged file is renamed into the
// first recipient's new/ and the others copy from it. If that recipient's
// directory fsync fails, the file goes back to where it was staged, so the
// others still get their copies.
func TestNoHardLinksWithdrawKeepsTheSourceForOthers(t *testing.T) {
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	boxes := []Mailbox{mailbox(root, "r1"), mailbox(root, "r2"), mailbox(root, "r3")}
	st, err := s.StageFor(boxes, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	ffs.hook = func(op, path string, real func() error) error {
		switch {
		case op == "link":
			return &os.LinkError{Op: "link", New: path, Err: syscall.EPERM}
		case op == "syncdir" && strings.HasPrefix(path, boxes[0].Path+"/"):
			return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}
		}
		return real()
	}
	if _, err := st.Deliver(boxes[0]); failure.KindOf(err) != failure.Temporary {
		t.Fatalf("first recipient: %v, want a temporary failure", err)
	}
	for _, mb := range boxes[1:] {
		if _, err := st.Deliver(mb); err != nil {
			t.Fatalf("%s: %v", mb.Path, err)
		}
	}
	ffs.hook = nil
	st.Discard()
	checkOutcome(t, boxes[0], false, nil)
	for _, mb := range boxes[1:] {
		checkOutcome(t, mb, true, testMessage)
	}
	if n := listDir(t, filepath.Join(root, SpoolName, "tmp")); len(n) != 0 {
		t.Errorf("spool tmp/ after Discard: %v", n)
	}
}

// A staged message publishes only before its deadline: a recipient
// reached later, or whose publish (link/rename, fsync of new/) ended
// later because the filer hung meanwhile, gets a temporary failure and
// nothing in new/ (acknowledged ⇔ in new/); one in time is acknowledged.
func TestCommitDeadline(t *testing.T) {
	const deadline = 5 * time.Minute
	for _, tc := range []struct {
		name string
		// hangOn is the FS operation on new/ during which the filer
		// "hangs" past the deadline; "" for none; "before" moves the
		// clock past it before Deliver.
		hangOn string
		two    bool // alice in time, then bob (staged in the spool)
		acked  bool
	}{
		{name: "in time", acked: true},
		{name: "late before publishing", hangOn: "before"},
		{name: "rename hangs past the deadline", hangOn: "rename"},
		{name: "fsync of new/ hangs past the deadline", hangOn: "syncdir"},
		{name: "second recipient late", two: true, hangOn: "before"},
		{name: "rename of the last of two hangs", two: true, hangOn: "rename"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := testkit.NewClock(time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC))
			ffs := &faultFS{}
			s, root := newTestStore(t, ffs, func(o *Options) { o.Now = clock.Now })
			alice, bob := mailbox(root, "alice"), mailbox(root, "bob")
			rcpts := []Mailbox{alice}
			if tc.two {
				rcpts = append(rcpts, bob)
			}
			st, err := s.StageFor(rcpts, bytes.NewReader(testMessage))
			if err != nil {
				t.Fatal(err)
			}
			st.SetDeadline(clock.Now().Add(deadline))
			late := func(op, path string, real func() error) error {
				if op == tc.hangOn && strings.Contains(path, "/new") {
					clock.Advance(deadline)
				}
				return real()
			}
			var aliceErr error
			if tc.two {
				_, aliceErr = st.Deliver(alice)
				if aliceErr != nil {
					t.Fatalf("alice, in time: %v", aliceErr)
				}
			}
			if tc.hangOn == "before" {
				clock.Advance(deadline)
			} else {
				ffs.hook = late
			}
			last := rcpts[len(rcpts)-1]
			_, err = st.Deliver(last)
			ffs.hook = nil
			st.Discard()
			if tc.acked {
				if err != nil {
					t.Fatalf("in time: %v", err)
				}
			} else if !errors.Is(err, ErrCommitDeadline) || failure.KindOf(err) != failure.Temporary {
				t.Fatalf("late: %v, want a temporary failure for the deadline", err)
			}
			checkOutcome(t, last, tc.acked, testMessage)
			if tc.two {
				checkOutcome(t, alice, true, testMessage)
			}
		})
	}
}

// OSFS.Rename is rename(2) without os.Rename's lstat of the target (one
// NFS LOOKUP per publish, two on NFSv4): a file is still never renamed
// over a directory, and the error names both paths.
func TestOSFSRenameOntoDirectory(t *testing.T) {
	dir := t.TempDir()
	file, sub := filepath.Join(dir, "f"), filepath.Join(dir, "d")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	err := OSFS{}.Rename(file, sub)
	le, ok := err.(*os.LinkError)
	if !ok || !errors.Is(err, syscall.EISDIR) || le.Old != file || le.New != sub {
		t.Errorf("rename onto a directory: %v", err)
	}
	if err := (OSFS{}).Rename(file, filepath.Join(dir, "g")); err != nil {
		t.Errorf("rename: %v", err)
	}
}

// syncOpsFS answers DirOpsSynchronous with sync (counting the questions),
// as an NFS mount would with true.
type syncOpsFS struct {
	faultFS
	sync  bool
	asked atomic.Int32
}

func (f *syncOpsFS) DirOpsSynchronous(string) (bool, error) {
	f.asked.Add(1)
	return f.sync, nil
}

// Where directory operations are synchronous on the server (NFS), a
// delivery does not open and fsync new/ (a GETATTR for a no-op), and the
// filesystem is asked once per device, not per delivery; elsewhere new/
// is fsynced for every delivery, as before.
func TestDirFsyncOnlyWhereDirOpsAreNotSynchronous(t *testing.T) {
	for _, sync := range []bool{true, false} {
		t.Run(fmt.Sprintf("synchronous %v", sync), func(t *testing.T) {
			f := &syncOpsFS{sync: sync}
			var syncs atomic.Int32
			f.hook = func(op, path string, real func() error) error {
				if op == "syncdir" {
					syncs.Add(1)
				}
				return real()
			}
			s, root := newTestStore(t, f)
			mb := mailbox(root, "d")
			deliverN(t, s, mb, 1)
			syncs.Store(0)
			deliverN(t, s, mb, 3)
			want := int32(3)
			if sync {
				want = 0
			}
			if got := syncs.Load(); got != want {
				t.Errorf("%d directory fsyncs for 3 deliveries, want %d", got, want)
			}
			if got := f.asked.Load(); got != 1 {
				t.Errorf("DirOpsSynchronous asked %d times, want once", got)
			}
			if n := len(listDir(t, filepath.Join(mb.Path, "new"))); n != 4 {
				t.Errorf("%d messages in new/, want 4", n)
			}
		})
	}
}

// TestLateDeliveryNotWithdrawnIsAcknowledged: a delivery that turns out
// late after its publish is taken back out of new/ and answered 4xx; when
// taking it back fails (the filer refuses the REMOVE), the message stays
// durable in new/, and a 4xx would make Postfix's retry a sure second
// copy: it is acknowledged instead.
func TestLateDeliveryNotWithdrawnIsAcknowledged(t *testing.T) {
	const deadline = 5 * time.Minute
	clock := testkit.NewClock(time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC))
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs, func(o *Options) { o.Now = clock.Now })
	alice := mailbox(root, "alice")
	st, err := s.Stage(alice, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	st.SetDeadline(clock.Now().Add(deadline))
	var advanced, refused bool
	ffs.hook = func(op, path string, real func() error) error {
		switch {
		case op == "rename" && strings.Contains(path, "/new/") && !advanced:
			advanced = true
			clock.Advance(deadline) // the filer "hung" past the deadline
		case op == "rename" && advanced && strings.Contains(path, "/tmp/"):
			return syscall.EIO // moving it back to tmp/ fails too
		case op == "unlink" && strings.Contains(path, "/new/"):
			refused = true
			return syscall.EIO
		}
		return real()
	}
	_, err = st.Deliver(alice)
	ffs.hook = nil
	if !advanced || !refused {
		t.Fatalf("rename seen %v, unlink of new/ refused %v: the test does not test what it says", advanced, refused)
	}
	if err != nil {
		t.Fatalf("late delivery left durable in new/: %v, want it acknowledged", err)
	}
	checkOutcome(t, alice, true, testMessage)
}
