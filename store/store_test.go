package store

import (
	"bytes"
	"errors"
	"io"
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

const testMarker = ".nfsdrop-mounted"

func newTestStore(t testing.TB, fsys FS, opts ...func(*Options)) (*Store, string) {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, testMarker), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	no := false
	o := Options{MailRoot: root, MountMarker: testMarker, Hostname: "mx1.test", ESTALERetries: 3, FS: fsys, Chown: &no}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

func mailbox(root, user string) Mailbox {
	return Mailbox{Path: filepath.Join(root, "example.org", user, "Maildir"), UID: -1, GID: -1}
}

func listDir(t testing.TB, dir string) []string {
	t.Helper()
	names, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		out = append(out, n.Name())
	}
	return out
}

// checkOutcome asserts the store's contract: acknowledged ⇔ exactly one
// complete file in new/; tmp/ empty either way.
func checkOutcome(t *testing.T, mb Mailbox, acked bool, want []byte) {
	t.Helper()
	newFiles := listDir(t, filepath.Join(mb.Path, "new"))
	tmpFiles := listDir(t, filepath.Join(mb.Path, "tmp"))
	if len(tmpFiles) != 0 {
		t.Errorf("tmp/ not empty: %v", tmpFiles)
	}
	if !acked {
		if len(newFiles) != 0 {
			t.Errorf("failed delivery left files in new/: %v", newFiles)
		}
		return
	}
	if len(newFiles) != 1 {
		t.Fatalf("acknowledged delivery: want exactly 1 file in new/, got %v", newFiles)
	}
	got, err := os.ReadFile(filepath.Join(mb.Path, "new", newFiles[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("stored message differs: got %d bytes, want %d", len(got), len(want))
	}
}

var testMessage = []byte("Subject: test\r\nFrom: a@example.org\r\n\r\nbody line\r\nsecond\n")

func TestDeliverFaults(t *testing.T) {
	type hook = func(op, path string, real func() error) error
	onceErr := func(target string, errno syscall.Errno, runReal bool) hook {
		var done atomic.Bool
		return func(op, path string, real func() error) error {
			if op == target && done.CompareAndSwap(false, true) {
				if runReal {
					if err := real(); err != nil {
						return err
					}
				}
				return &os.LinkError{Op: op, Old: "", New: path, Err: errno}
			}
			return real()
		}
	}
	// The hooks hold state (onceErr): each run of the table gets its own.
	cases := func() []deliverFaultCase {
		return []deliverFaultCase{
			{name: "clean", hook: nil, acked: true},
			{name: "link succeeded but reply lost (EEXIST on retransmit)", two: true, hook: onceErr("link", syscall.EEXIST, true), acked: true},
			{name: "link succeeded but answers ENOENT", two: true, hook: onceErr("link", syscall.ENOENT, true), acked: true},
			{name: "link succeeded but answers EIO", two: true, hook: onceErr("link", syscall.EIO, true), acked: true},
			{name: "link EEXIST for another file (collision)", two: true, hook: onceErr("link", syscall.EEXIST, false), acked: false, kind: failure.Temporary, errno: syscall.EEXIST},
			{name: "link EIO, not made", two: true, hook: onceErr("link", syscall.EIO, false), acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "link ENOSPC", two: true, hook: onceErr("link", syscall.ENOSPC, false), acked: false, kind: failure.Temporary, errno: syscall.ENOSPC},
			{name: "link EDQUOT", two: true, hook: onceErr("link", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT},
			{name: "link ESTALE once then works", two: true, hook: onceErr("link", syscall.ESTALE, false), acked: true},
			{name: "link ESTALE forever", two: true, hook: func(op, path string, real func() error) error {
				if op == "link" {
					return &os.LinkError{Op: "link", New: path, Err: syscall.ESTALE}
				}
				return real()
			}, acked: false, kind: failure.Temporary, errno: syscall.ESTALE},
			{name: "cross-device link: copy", two: true, hook: onceErr("link", syscall.EXDEV, false), acked: true},
			// The only (or last) recipient takes the staged file with one
			// rename: a lost reply is detected as for a link.
			{name: "rename succeeded but reply lost (ENOENT on retransmit)", hook: onceErr("rename", syscall.ENOENT, true), acked: true},
			{name: "rename succeeded but answers EEXIST", hook: onceErr("rename", syscall.EEXIST, true), acked: true},
			{name: "rename succeeded but answers EIO", hook: onceErr("rename", syscall.EIO, true), acked: true},
			{name: "rename succeeded but answers ESTALE", hook: onceErr("rename", syscall.ESTALE, true), acked: true},
			// The hung-filer gate answers ETIMEDOUT while its probe still
			// holds the volume down although the filer is back: the
			// verification asks again instead of answering "not published".
			{name: "rename succeeded but answers ENOENT, target lstat ETIMEDOUT twice", hook: func() hook {
				var renamed atomic.Bool
				var timeouts atomic.Int32
				return func(op, path string, real func() error) error {
					if op == "rename" && renamed.CompareAndSwap(false, true) {
						if err := real(); err != nil {
							return err
						}
						return &os.LinkError{Op: op, New: path, Err: syscall.ENOENT}
					}
					if op == "lstat" && renamed.Load() && strings.Contains(path, "/new/") && timeouts.Add(1) <= 2 {
						return &os.PathError{Op: "lstat", Path: path, Err: syscall.ETIMEDOUT}
					}
					return real()
				}
			}(), acked: true},
			{name: "rename EIO, not made", hook: onceErr("rename", syscall.EIO, false), acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "rename ENOENT, not made", hook: onceErr("rename", syscall.ENOENT, false), acked: false, kind: failure.Temporary, errno: syscall.ENOENT},
			{name: "rename ESTALE once then works", hook: onceErr("rename", syscall.ESTALE, false), acked: true},
			{name: "rename ESTALE forever", hook: func(op, path string, real func() error) error {
				if op == "rename" {
					return &os.LinkError{Op: "rename", New: path, Err: syscall.ESTALE}
				}
				return real()
			}, acked: false, kind: failure.Temporary, errno: syscall.ESTALE},
			{name: "rename ENOSPC", hook: onceErr("rename", syscall.ENOSPC, false), acked: false, kind: failure.Temporary, errno: syscall.ENOSPC},
			{name: "rename EDQUOT", hook: onceErr("rename", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT},
			{name: "rename EDQUOT, defer", hook: onceErr("rename", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT, deferred: true},
			// The tmp/ file is created without O_EXCL (its name is unique by
			// construction): a CREATE that worked but answers an error leaves
			// no file behind.
			{name: "create succeeded but answers EEXIST", hook: onceErr("open", syscall.EEXIST, true), acked: false, kind: failure.Temporary, errno: syscall.EEXIST},
			{name: "create succeeded but answers EIO", hook: onceErr("open", syscall.EIO, true), acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "create succeeded but answers ENOENT", hook: onceErr("open", syscall.ENOENT, true), acked: false, kind: failure.Temporary, errno: syscall.ENOENT},
			{name: "create succeeded but answers ESTALE: retransmitted, opens the same file", hook: onceErr("open", syscall.ESTALE, true), acked: true},
			{name: "create ENOSPC", hook: onceErr("open", syscall.ENOSPC, false), acked: false, kind: failure.Temporary, errno: syscall.ENOSPC},
			{name: "create EDQUOT", hook: onceErr("open", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT},
			{name: "create finds another process's file under the name: fresh name", hook: func() hook {
				var done atomic.Bool
				return func(op, path string, real func() error) error {
					if op == "open" && strings.Contains(path, "/tmp/") && done.CompareAndSwap(false, true) {
						// Another writer made this very name a moment ago.
						if err := os.WriteFile(path, []byte("someone else's"), 0o600); err != nil {
							return err
						}
					}
					return real()
				}
			}(), acked: true, tmpLeft: 1},
			{name: "create finds a symlink under the name: fresh name, nothing written through it", hook: func() hook {
				var done atomic.Bool
				return func(op, path string, real func() error) error {
					if op == "open" && strings.Contains(path, "/tmp/") && done.CompareAndSwap(false, true) {
						if err := os.Symlink("/nonexistent-target", path); err != nil {
							return err
						}
					}
					return real()
				}
			}(), acked: true, tmpLeft: 1},
			{name: "no hard links: rename fallback", hook: func(op, path string, real func() error) error {
				if op == "link" {
					return &os.LinkError{Op: "link", New: path, Err: syscall.EPERM}
				}
				return real()
			}, acked: true},
			{name: "no hard links: rename succeeded but answers ENOENT", hook: func() hook {
				var done atomic.Bool
				return func(op, path string, real func() error) error {
					switch {
					case op == "link":
						return &os.LinkError{Op: "link", New: path, Err: syscall.EPERM}
					case op == "rename" && done.CompareAndSwap(false, true):
						if err := real(); err != nil {
							return err
						}
						return &os.LinkError{Op: "rename", New: path, Err: syscall.ENOENT}
					}
					return real()
				}
			}(), acked: true},
			{name: "cross-device link: copy", hook: onceErr("link", syscall.EXDEV, false), acked: true},
			{name: "EIO at fsync", hook: onceErr("fsync", syscall.EIO, false), acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "EIO at close", hook: onceErr("close", syscall.EIO, true), acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "ENOSPC at write, after part was written", hook: onceErr("write", syscall.ENOSPC, true), acked: false, kind: failure.Temporary, errno: syscall.ENOSPC},
			{name: "EDQUOT at write, bounce", hook: onceErr("write", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT},
			{name: "EDQUOT at write, defer", hook: onceErr("write", syscall.EDQUOT, false), acked: false, kind: failure.OverQuota, errno: syscall.EDQUOT, deferred: true},
			{name: "ESTALE at tmp create once", hook: onceErr("open", syscall.ESTALE, false), acked: true},
			{name: "EIO at new/ fsync", hook: func(op, path string, real func() error) error {
				if op == "syncdir" {
					return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}
				}
				return real()
			}, acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "unlink of tmp fails (ESTALE): still acknowledged", hook: func(op, path string, real func() error) error {
				if op == "unlink" && strings.Contains(path, "/tmp/") {
					real() // the file goes, but the reply says stale
					return &os.PathError{Op: "unlink", Path: path, Err: syscall.ESTALE}
				}
				return real()
			}, acked: true},
			// An appended-to maildirsize saying "full" is recounted before a
			// refusal; trouble while recounting is temporary, never a bounce.
			{name: "EIO listing cur/ while recounting a full maildirsize", setup: untrustedFull, hook: func(op, path string, real func() error) error {
				if op == "readdir" && strings.HasSuffix(path, "/cur") {
					return &os.PathError{Op: "open", Path: path, Err: syscall.EIO}
				}
				return real()
			}, acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "ESTALE listing new/ once while recounting: looked up again", setup: untrustedFull, hook: func() hook {
				var done atomic.Bool
				return func(op, path string, real func() error) error {
					if op == "readdir" && strings.HasSuffix(path, "/new") && done.CompareAndSwap(false, true) {
						return &os.PathError{Op: "open", Path: path, Err: syscall.ESTALE}
					}
					return real()
				}
			}(), acked: true},
			{name: "EIO at lstat of an unsized message while recounting", setup: func(t *testing.T, mb *Mailbox) {
				untrustedFull(t, mb)
				os.WriteFile(filepath.Join(mb.Path, "cur", "1700000000.unsized:2,S"), []byte("x"), 0o600)
			}, hook: func(op, path string, real func() error) error {
				if op == "lstat" && filepath.Base(path) == "1700000000.unsized:2,S" {
					return &os.PathError{Op: "lstat", Path: path, Err: syscall.EIO}
				}
				return real()
			}, acked: false, kind: failure.Temporary, errno: syscall.EIO},
			{name: "recount shows room, writing it back fails (EIO at fsync): delivered", setup: untrustedFull, hook: func(op, path string, real func() error) error {
				if op == "fsync" && strings.HasSuffix(path, ".maildirsize") {
					return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}
				}
				return real()
			}, acked: true},
			{name: "recount shows room, rename over maildirsize fails: delivered", setup: untrustedFull, hook: func(op, path string, real func() error) error {
				if op == "rename" && strings.HasSuffix(path, "/maildirsize") {
					return &os.LinkError{Op: "rename", New: path, Err: syscall.EIO}
				}
				return real()
			}, acked: true},
			{name: "recount confirms full, bounce", setup: reallyFull, acked: false, kind: failure.OverQuota},
			{name: "recount confirms full, defer", setup: reallyFull, acked: false, kind: failure.OverQuota, deferred: true},
		}
	}
	// Each case runs as a delivery by the mailbox's owner, and (as root)
	// as a root delivery for another owner, whose tmp/ file is created as
	// that owner (FS.CreateAs).
	for _, owned := range []bool{false, true} {
		for _, tc := range cases() {
			name := tc.name
			if owned {
				name = "root for another owner/" + name
			}
			t.Run(name, func(t *testing.T) { testDeliverFault(t, tc, owned) })
		}
	}
}

// testDeliverFault runs one case of TestDeliverFaults.
func testDeliverFault(t *testing.T, tc deliverFaultCase, owned bool) {
	chown := false
	if owned {
		testenv.RequireRoot(t)
		chown = true
	}
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs, func(o *Options) { o.QuotaDefer = tc.deferred; o.Chown = &chown })
	mb := mailbox(root, "alice")
	bob := mailbox(root, "bob")
	if owned {
		mb.UID, mb.GID = 5001, 5001
		bob.UID, bob.GID = 5002, 5002
	}
	err := s.EnsureMaildir(mb)
	if err != nil {
		t.Fatal(err)
	}
	if tc.setup != nil {
		tc.setup(t, &mb)
	}
	ffs.hook = tc.hook
	var d Delivery
	if tc.two {
		d, err = deliverTwo(t, s, ffs, mb, bob, tc.hook)
	} else {
		d, err = s.Deliver(mb, bytes.NewReader(testMessage))
	}
	acked := err == nil
	if acked != tc.acked {
		t.Fatalf("acknowledged=%v, want %v (err %v)", acked, tc.acked, err)
	}
	ffs.hook = nil
	if tc.tmpLeft > 0 {
		removeForeign(t, mb, tc.tmpLeft)
	}
	checkOutcome(t, mb, acked, testMessage)
	if tc.two {
		checkOutcome(t, bob, true, testMessage)
		if left := listDir(t, filepath.Join(root, SpoolName, "tmp")); len(left) != 0 {
			t.Errorf("spool tmp/ not empty: %v", left)
		}
	}
	if acked {
		if _, err := os.Stat(filepath.Join(mb.Path, "new", d.Key)); err != nil {
			t.Errorf("key %q not in new/: %v", d.Key, err)
		}
		return
	}
	fe := failure.As(err)
	if fe.Kind != tc.kind {
		t.Errorf("kind = %v, want %v (%v)", fe.Kind, tc.kind, err)
	}
	if tc.errno != 0 && !errors.Is(err, tc.errno) {
		t.Errorf("errors.Is(err, %v) = false: %v", tc.errno, err)
	}
	if fe.Temporary() != (tc.kind == failure.Temporary || tc.deferred) {
		t.Errorf("Temporary() = %v for %v", fe.Temporary(), err)
	}
}

// deliverFaultCase is one case of TestDeliverFaults.
type deliverFaultCase struct {
	name     string
	hook     func(op, path string, real func() error) error
	acked    bool
	kind     failure.Kind
	errno    syscall.Errno
	deferred bool // QuotaDefer set
	// two delivers the message for alice and then bob, staged once
	// in the spool: alice's copy is a link (the hook acts then), bob's
	// the staged file renamed, with no hook. The outcome is checked
	// for alice; bob must be acknowledged whatever happened to alice.
	two bool
	// tmpLeft is how many files not of this delivery the test put in
	// tmp/ (they must still be there, untouched).
	tmpLeft int
	// setup prepares the Maildir (quota, maildirsize, old messages)
	// before the hook is installed.
	setup func(t *testing.T, mb *Mailbox)
}

// deliverTwo stages the message once for alice and bob (in the spool),
// delivers it to alice with hook on (a link: bob is still to come) and to
// bob without (the staged file renamed), and returns alice's outcome.
func deliverTwo(t *testing.T, s *Store, ffs *faultFS, alice, bob Mailbox, hook func(op, path string, real func() error) error) (Delivery, error) {
	t.Helper()
	ffs.hook = nil
	st, err := s.StageFor([]Mailbox{alice, bob}, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	ffs.hook = hook
	d, aliceErr := st.Deliver(alice)
	ffs.hook = nil
	if _, err := st.Deliver(bob); err != nil {
		t.Errorf("bob was not delivered after alice's trouble: %v", err)
	}
	return d, aliceErr
}

// removeForeign checks that the n files another process had under our
// tmp/ names are still there, as that process left them, and removes them.
func removeForeign(t *testing.T, mb Mailbox, n int) {
	t.Helper()
	dir := filepath.Join(mb.Path, "tmp")
	names := listDir(t, dir)
	if len(names) != n {
		t.Fatalf("tmp/ holds %v, want the %d files of another process", names, n)
	}
	for _, name := range names {
		p := filepath.Join(dir, name)
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() {
			if b, _ := os.ReadFile(p); string(b) != "someone else's" {
				t.Errorf("another process's tmp/ file was written to: %q", b)
			}
		}
		os.Remove(p)
	}
}

// untrustedFull gives mb a one-message quota and a maildirsize that says
// "full" through appended lines, while the Maildir is empty: the lines
// may be what NFS made of concurrent appends, so a refusal needs a recount.
func untrustedFull(t *testing.T, mb *Mailbox) {
	mb.Quota = Quota{Messages: 1}
	writeMaildirsize(t, *mb, "1C\n0 0\n300 1\n")
}

// reallyFull is untrustedFull with the message really there (in cur/, so
// that new/ holds only what the delivery under test publishes).
func reallyFull(t *testing.T, mb *Mailbox) {
	untrustedFull(t, mb)
	putMessages(t, filepath.Join(mb.Path, "cur"), 300)
}

// A reader that fails mid-message (client gone during DATA): nothing is
// stored, nothing left in tmp/.
func TestDeliverReaderFails(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "bob")
	r := io.MultiReader(bytes.NewReader([]byte("Subject: x\r\n")), errReader{io.ErrUnexpectedEOF})
	_, err := s.Deliver(mb, r)
	if err == nil || !failure.As(err).Temporary() {
		t.Fatalf("want temporary failure, got %v", err)
	}
	checkOutcome(t, mb, false, nil)

	tooBig := failure.New(failure.TooLarge, "read", "message too large", nil)
	_, err = s.Deliver(mb, io.MultiReader(bytes.NewReader([]byte("x")), errReader{tooBig}))
	if failure.KindOf(err) != failure.TooLarge {
		t.Fatalf("a *failure.Error from the reader must pass through, got %v", err)
	}
	checkOutcome(t, mb, false, nil)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestMountGuard(t *testing.T) {
	s, root := newTestStore(t, nil)
	os.Remove(filepath.Join(root, testMarker))
	mb := mailbox(root, "carol")
	_, err := s.Deliver(mb, bytes.NewReader(testMessage))
	if err == nil || failure.KindOf(err) != failure.Temporary {
		t.Fatalf("missing marker: want temporary failure, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "example.org")); !os.IsNotExist(err) {
		t.Fatalf("the store created directories on an unmounted root: %v", err)
	}
}

func TestMaildirCreation(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "dave")
	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"", "new", "cur", "tmp"} {
		fi, err := os.Stat(filepath.Join(mb.Path, sub))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", sub, fi.Mode().Perm())
		}
	}
	fi, _ := os.Stat(filepath.Join(root, "example.org"))
	if fi.Mode().Perm() != 0o711 {
		t.Errorf("parent mode %v, want 0711", fi.Mode().Perm())
	}
	// A mailbox path outside the root is refused permanently.
	_, err := s.Deliver(Mailbox{Path: "/etc/evil", UID: -1, GID: -1}, bytes.NewReader(testMessage))
	if failure.KindOf(err) != failure.Permanent {
		t.Fatalf("outside root: got %v", err)
	}
	// A file where the Maildir should be: permanent for that user.
	os.MkdirAll(filepath.Join(root, "example.org"), 0o711)
	os.WriteFile(filepath.Join(root, "example.org", "erin"), nil, 0o600)
	_, err = s.Deliver(mailbox(root, "erin"), bytes.NewReader(testMessage))
	if failure.KindOf(err) != failure.Permanent {
		t.Fatalf("file in the way: got %v", err)
	}
}

func TestMultiRecipientLinks(t *testing.T) {
	s, root := newTestStore(t, nil)
	boxes := []Mailbox{mailbox(root, "u1"), mailbox(root, "u2"), mailbox(root, "u3")}
	full := mailbox(root, "full")
	full.Quota = Quota{Messages: 1}
	if _, err := s.Deliver(full, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stage(boxes[0], bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i, mb := range append(boxes[:2:2], full, boxes[2]) {
		d, err := st.Deliver(mb)
		if mb.Path == full.Path {
			if failure.KindOf(err) != failure.OverQuota {
				t.Fatalf("full mailbox: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("recipient %d: %v", i, err)
		}
		if !d.Linked {
			t.Errorf("recipient %d not hard-linked", i)
		}
		keys = append(keys, d.Key)
	}
	st.Discard()
	var ino uint64
	for i, mb := range boxes {
		checkOutcome(t, mb, true, testMessage)
		fi, err := os.Stat(filepath.Join(mb.Path, "new", keys[i]))
		if err != nil {
			t.Fatal(err)
		}
		sys := fi.Sys().(*syscall.Stat_t)
		if i == 0 {
			ino = sys.Ino
		} else if sys.Ino != ino {
			t.Errorf("recipient %d is a copy, want one inode", i)
		}
		if sys.Nlink != 3 {
			t.Errorf("nlink = %d, want 3", sys.Nlink)
		}
	}
	if n := len(listDir(t, filepath.Join(full.Path, "new"))); n != 1 {
		t.Errorf("over-quota mailbox touched: %d files", n)
	}
}

func TestSizesInName(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "sizes")
	cases := []struct {
		msg        string
		size, crlf int64
	}{
		{"", 0, 0},
		{"a\nb\n", 4, 6},
		{"a\r\nb\r\n", 6, 6},
		{"a\x00b\nc", 5, 8},
		{"\n\n\r\n\r", 5, 9},
	}
	for _, c := range cases {
		d, err := s.Deliver(mb, bytes.NewReader([]byte(c.msg)))
		if err != nil {
			t.Fatal(err)
		}
		size, ok1, crlf, ok2 := SizesFromName(d.Key)
		if !ok1 || !ok2 || size != c.size || crlf != c.crlf {
			t.Errorf("%q: name %s: S=%d W=%d, want %d %d", c.msg, d.Key, size, crlf, c.size, c.crlf)
		}
		got, _ := os.ReadFile(filepath.Join(mb.Path, "new", d.Key))
		if string(got) != c.msg {
			t.Errorf("%q stored as %q", c.msg, got)
		}
	}
}

func TestCRLFCounterAcrossChunks(t *testing.T) {
	msg := []byte("a\r\nb\nc\r\n\n\rx\r")
	for split := 0; split <= len(msg); split++ {
		var c crlfCounter
		c.add(msg[:split])
		c.add(msg[split:])
		var whole crlfCounter
		whole.add(msg)
		if c != whole {
			t.Errorf("split at %d: %+v, whole %+v", split, c, whole)
		}
		if whole.crlf != int64(len(msg))+2 {
			t.Errorf("crlf = %d", whole.crlf)
		}
	}
}

func TestUniqueNameUIDLLimit(t *testing.T) {
	long := strings.Repeat("very-long-hostname-label.", 10) + "example.org"
	host := HostPart(long)
	if host != HostPart(long) {
		t.Fatal("HostPart not deterministic")
	}
	if HostPart(long+"x") == host {
		t.Fatal("different hostnames must stay distinct")
	}
	worst := time.Unix(9999999999, 999999000)
	base := uniqueBase(worst, 4194304, ^uint32(0), host)
	if len(base) > MaxUIDLLen {
		t.Errorf("base %q is %d chars > %d", base, len(base), MaxUIDLLen)
	}
	for _, c := range []byte(base) {
		if c < 0x21 || c > 0x7e {
			t.Errorf("base %q has byte %#x outside RFC 1939's range", base, c)
		}
	}
	if got := HostPart("a/b:c,d"); got != `a\057b\072c\054d` {
		t.Errorf("HostPart escaping: %q", got)
	}
	name := fullName(base, 10, 12)
	if BaseName(name) != base || BaseName(name+":2,S") != base {
		t.Error("BaseName")
	}
}

func TestQuota(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "q")
	mb.Quota = Quota{Bytes: 1000, Messages: 3}
	msg := bytes.Repeat([]byte("x"), 300)
	for i := 0; i < 3; i++ {
		if _, err := s.Deliver(mb, bytes.NewReader(msg)); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(mb.Path, "maildirsize"))
	if err != nil {
		t.Fatal(err)
	}
	if fig, ok := parseMaildirsize(data, "1000S,3C"); !ok || fig.usage != (Usage{900, 3}) {
		t.Fatalf("maildirsize %q -> %+v %v", data, fig, ok)
	}
	_, err = s.Deliver(mb, bytes.NewReader(msg))
	if fe := failure.As(err); fe.Kind != failure.OverQuota || fe.Temporary() {
		t.Fatalf("4th message: want permanent over-quota, got %v", err)
	}
	// At RCPT time (size unknown) a full mailbox is refused too.
	if failure.KindOf(s.CheckQuota(mb, 0)) != failure.OverQuota {
		t.Error("CheckQuota(0) on a full mailbox passed")
	}
	// Byte limit, defer mode.
	s.quotaDefer = true
	mb.Quota = Quota{Bytes: 1000}
	_, err = s.Deliver(mb, bytes.NewReader(msg))
	if fe := failure.As(err); fe.Kind != failure.OverQuota || !fe.Temporary() {
		t.Fatalf("bytes over quota in defer mode: %v", err)
	}
	// The definition changed, so the file was recalculated.
	data, _ = os.ReadFile(filepath.Join(mb.Path, "maildirsize"))
	if !strings.HasPrefix(string(data), "1000S\n900 3\n") {
		t.Errorf("recalculated maildirsize = %q", data)
	}
	// A torn line forces recalculation, and removal records count down.
	os.WriteFile(filepath.Join(mb.Path, "maildirsize"), []byte("1000S\n900 3\n30"), 0o600)
	u, _, err := s.QuotaUsage(mb)
	if err != nil || u.Bytes != 900 || u.Messages != 3 {
		t.Fatalf("usage after torn line: %+v %v", u, err)
	}
	s.RecordRemoval(mb, 300, 1)
	if u, _, _ = s.QuotaUsage(mb); u.Bytes != 600 || u.Messages != 2 {
		t.Errorf("after removal: %+v", u)
	}
}

func TestSweepTmp(t *testing.T) {
	now := time.Now()
	s, root := newTestStore(t, nil, func(o *Options) { o.Now = func() time.Time { return now.Add(40 * time.Hour) } })
	mb := mailbox(root, "sweep")
	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(mb.Path, "tmp", "old")
	os.WriteFile(old, []byte("partial"), 0o600)
	n, err := s.SweepTmp(mb.Path, TmpMaxAge, true)
	if err != nil || n != 1 {
		t.Fatalf("dry run: %d %v", n, err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatal("dry run removed a file")
	}
	n, err = s.SweepTmp(mb.Path, TmpMaxAge, false)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if len(listDir(t, filepath.Join(mb.Path, "new"))) != 1 {
		t.Error("sweeper touched new/")
	}
	// A fresh file is kept.
	s.now = time.Now
	os.WriteFile(old, []byte("in progress"), 0o600)
	if n, _ := s.SweepTmp(mb.Path, TmpMaxAge, false); n != 0 {
		t.Error("sweeper removed a fresh tmp file")
	}
}

// A header every recipient shares (a scan verdict) is written once with
// Restage and hard-linked to each recipient, not copied per recipient.
func TestRestageLinksOneTaggedCopy(t *testing.T) {
	s, root := newTestStore(t, nil)
	boxes := []Mailbox{mailbox(root, "t1"), mailbox(root, "t2"), mailbox(root, "t3")}
	st, err := s.StageFor(boxes, bytes.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	header := []byte("X-Virus-Status: Clean\r\n")
	tagged, err := st.Restage(header)
	if err != nil {
		t.Fatal(err)
	}
	var inodes = map[uint64]bool{}
	for _, mb := range boxes {
		d, err := tagged.Deliver(mb)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(mb.Path, "new", d.Key))
		if err != nil {
			t.Fatal(err)
		}
		inodes[fi.Sys().(*syscall.Stat_t).Ino] = true
	}
	st.Discard()
	tagged.Discard()
	if len(inodes) != 1 {
		t.Errorf("tagged message stored as %d inodes, want 1", len(inodes))
	}
	if left := listDir(t, filepath.Join(root, SpoolName, "tmp")); len(left) != 0 {
		t.Errorf("spool tmp/ not empty after Discard: %v", left)
	}
	for _, mb := range boxes {
		checkOutcome(t, mb, true, append(append([]byte{}, header...), testMessage...))
	}
}

// Daemons sweep the tmp/ of Maildirs they deliver to, in the background,
// at most once a day each; new/ is never touched.
func TestSweepInPassing(t *testing.T) {
	later := time.Now().Add(40 * time.Hour)
	var clock atomic.Pointer[time.Time]
	clock.Store(&later)
	s, root := newTestStore(t, nil, func(o *Options) { o.Now = func() time.Time { return *clock.Load() } })
	stop := make(chan struct{})
	defer close(stop)
	s.StartSweeper(stop, TmpMaxAge)
	mb := mailbox(root, "passing")
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(mb.Path, "tmp", "1.abandoned")
	os.WriteFile(leftover, []byte("partial"), 0o600)
	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	waitSwept := func(path string) {
		t.Helper()
		testkit.Eventually(t, 5*time.Second, func() bool {
			_, err := os.Stat(path)
			return os.IsNotExist(err)
		}, func() string { return "the background sweeper did not remove the abandoned tmp/ file " + path })
	}
	waitSwept(leftover)
	if n := len(listDir(t, filepath.Join(mb.Path, "new"))); n != 1 {
		t.Errorf("new/ has %d files, want 1", n)
	}
	// Within a day the same Maildir is not swept again.
	os.WriteFile(leftover, []byte("partial"), 0o600)
	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	// The sweeper takes its requests in order, one at a time: once a
	// Maildir asked for after this delivery is swept, a second sweep of
	// mb, had it been asked for, would have run already.
	sentinel := mailbox(root, "sentinel")
	if err := s.EnsureMaildir(sentinel); err != nil {
		t.Fatal(err)
	}
	sentinelLeftover := filepath.Join(sentinel.Path, "tmp", "1.abandoned")
	os.WriteFile(sentinelLeftover, []byte("partial"), 0o600)
	if _, err := s.Deliver(sentinel, bytes.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	waitSwept(sentinelLeftover)
	if _, err := os.Stat(leftover); err != nil {
		t.Errorf("swept twice within a day: %v", err)
	}
}
