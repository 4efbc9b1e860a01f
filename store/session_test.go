package store

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// twoMachines makes two stores over one mail root with different host
// parts and their own index caches: two nfsdrop machines on one NFS store.
func twoMachines(t *testing.T) (*Store, *Store, string) {
	t.Helper()
	a, root := newTestStore(t, nil, func(o *Options) { o.Hostname = "mx1" })
	no := false
	b, err := New(Options{MailRoot: root, MountMarker: testMarker, Hostname: "mx2", Chown: &no})
	if err != nil {
		t.Fatal(err)
	}
	return a, b, root
}

func deliverN(t *testing.T, s *Store, mb Mailbox, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := s.Deliver(mb, strings.NewReader("Subject: m\n\nline\n.dot\n")); err != nil {
			t.Fatal(err)
		}
	}
}

var sessOpts = SessionOptions{LockStale: time.Minute, Owner: "test"}

func TestSessionLockAcrossMachines(t *testing.T) {
	a, b, root := twoMachines(t)
	mb := mailbox(root, "lock")
	deliverN(t, a, mb, 3)
	s1, err := a.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.OpenSession(mb, sessOpts); failure.KindOf(err) != failure.InUse {
		t.Fatalf("second session on another machine: want InUse, got %v", err)
	}
	// Deliveries need no lock.
	deliverN(t, b, mb, 1)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := b.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	if len(s2.Entries()) != 4 {
		t.Errorf("listing has %d entries, want 4", len(s2.Entries()))
	}
	s2.Close()
	if _, err := os.Lstat(filepath.Join(mb.Path, LockName)); !os.IsNotExist(err) {
		t.Errorf("lock file left behind: %v", err)
	}
}

func TestStaleLockTakeover(t *testing.T) {
	a, b, root := twoMachines(t)
	mb := mailbox(root, "stale")
	deliverN(t, a, mb, 2)
	dead, err := a.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	// The holder "dies": its refresher stops and the lock ages.
	close(dead.lock.stop)
	<-dead.lock.done
	old := unix.NsecToTimespec(time.Now().Add(-2 * time.Minute).UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(mb.Path, LockName), []unix.Timespec{old, old}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	s2, err := b.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	// The dead session must not delete anything now.
	dead.lock.stop = make(chan struct{})
	dead.lock.done = make(chan struct{})
	close(dead.lock.done)
	if err := dead.Commit([]int{0, 1}, nil); err == nil {
		t.Fatal("a session whose lock was taken over committed deletions")
	}
	if n := len(listDir(t, filepath.Join(mb.Path, "new"))); n != 2 {
		t.Fatalf("messages deleted by a session without the lock: %d left", n)
	}
	s2.Close()
}

func TestDeletionVisibleOnOtherMachine(t *testing.T) {
	a, b, root := twoMachines(t)
	mb := mailbox(root, "del")
	deliverN(t, a, mb, 5)
	// Age the directories so listings are cacheable.
	old := time.Now().Add(-time.Hour)
	for _, d := range []string{"new", "cur"} {
		os.Chtimes(filepath.Join(mb.Path, d), old, old)
	}
	sb, err := b.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	uidls := uidlsOf(sb)
	sb.Close()
	sb, _ = b.OpenSession(mb, sessOpts)
	if sb.CacheResult() != "hit" {
		t.Errorf("repeat login on an unchanged mailbox: cache %s, want hit", sb.CacheResult())
	}
	sb.Close()

	sa, err := a.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	if got := uidlsOf(sa); strings.Join(got, " ") != strings.Join(uidls, " ") {
		t.Fatalf("UIDLs differ between machines:\n%v\n%v", got, uidls)
	}
	if err := sa.Commit([]int{0, 2}, nil); err != nil {
		t.Fatal(err)
	}
	// Set the directories' mtimes back: their ctimes, which no one can
	// set, still reveal the change.
	for _, d := range []string{"new", "cur"} {
		os.Chtimes(filepath.Join(mb.Path, d), old, old)
	}
	sb, err = b.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if sb.CacheResult() == "hit" {
		t.Fatal("machine B served its cached listing after machine A deleted")
	}
	got := uidlsOf(sb)
	want := []string{uidls[1], uidls[3], uidls[4]}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("after deletion B lists %v, want %v", got, want)
	}
}

func uidlsOf(s *Session) []string {
	var out []string
	for _, e := range s.Entries() {
		out = append(out, e.UIDL)
	}
	return out
}

func TestSessionSizesAndOrder(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "sizes")
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	// Foreign files without ,S=/,W=: sizes are computed.
	os.WriteFile(filepath.Join(mb.Path, "cur", "1000000002.foreign:2,S"), []byte("a\nb\n"), 0o600)
	os.WriteFile(filepath.Join(mb.Path, "new", "1000000001.foreign"), []byte("a\r\nb"), 0o600)
	long := "1000000003." + strings.Repeat("x", 80)
	os.WriteFile(filepath.Join(mb.Path, "new", long), []byte("x"), 0o600)
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	es := ss.Entries()
	if len(es) != 3 || es[0].UIDL != "1000000001.foreign" || es[1].UIDL != "1000000002.foreign" {
		t.Fatalf("entries %+v", es)
	}
	if es[0].Size != 6 || es[1].Size != 6 {
		t.Errorf("CRLF sizes %d %d, want 6 6 (a missing final line end counts as CRLF)", es[0].Size, es[1].Size)
	}
	if !validUIDL(es[2].UIDL) || es[2].UIDL != derivedUIDL(BaseName(long)) {
		t.Errorf("derived UIDL %q", es[2].UIDL)
	}
	r, err := ss.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(r)
	r.Close()
	if string(data) != "a\nb\n" {
		t.Errorf("Open: %q", data)
	}
}

func TestMoveToCurKeepsUIDL(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "move")
	deliverN(t, s, mb, 2)
	opts := sessOpts
	opts.MoveToCur = true
	ss, _ := s.OpenSession(mb, opts)
	before := uidlsOf(ss)
	if err := ss.Commit(nil, []int{0}); err != nil {
		t.Fatal(err)
	}
	if n := len(listDir(t, filepath.Join(mb.Path, "cur"))); n != 1 {
		t.Fatalf("cur/ has %d files, want 1", n)
	}
	ss, _ = s.OpenSession(mb, opts)
	defer ss.Close()
	if strings.Join(uidlsOf(ss), " ") != strings.Join(before, " ") {
		t.Errorf("UIDLs changed after move to cur: %v -> %v", before, uidlsOf(ss))
	}
}

func TestLegacyUIDLs(t *testing.T) {
	for _, tc := range []struct {
		format, file string
		want         map[string]string
	}{
		{UIDLDovecot, "dovecot-uidlist", map[string]string{
			"1276528487.M364837P9451.kurkku": "000000014C164767",
			"1276528488.M11P9452.kurkku":     "000000024C164767",
			"1276528489.M12P9453.kurkku":     "0000abcd-legacy",
			"1300000000.M1P1.newhost":        "1300000000.M1P1.newhost",
		}},
		{UIDLCourier, "courierpop3dsizelist", map[string]string{
			"1276528487.M364837P9451.kurkku": "UID1-1276500000",
			"1276528488.M11P9452.kurkku":     "UID2-1276500000",
			"1276528489.M12P9453.kurkku":     "1276528489.M12P9453.kurkku",
			"1300000000.M1P1.newhost":        "1300000000.M1P1.newhost",
		}},
	} {
		t.Run(tc.format, func(t *testing.T) {
			s, root := newTestStore(t, nil)
			mb := mailbox(root, "legacy")
			s.EnsureMaildir(mb)
			fixture, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(mb.Path, tc.file), fixture, 0o600)
			for _, n := range []string{"cur/1276528487.M364837P9451.kurkku,S=1355,W=1394:2,S", "cur/1276528488.M11P9452.kurkku:2,", "new/1276528489.M12P9453.kurkku", "new/1300000000.M1P1.newhost,S=1,W=1"} {
				os.WriteFile(filepath.Join(mb.Path, n), bytes.Repeat([]byte("x"), 1), 0o600)
			}
			opts := sessOpts
			opts.UIDLFormat = tc.format
			ss, err := s.OpenSession(mb, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer ss.Close()
			for _, e := range ss.Entries() {
				if want := tc.want[BaseName(e.Name)]; e.UIDL != want {
					t.Errorf("%s: UIDL %q, want %q", e.Name, e.UIDL, want)
				}
			}
			if tc.format == UIDLCourier && ss.Entries()[1].Size != 104 {
				t.Errorf("Courier's recorded CRLF size not used: %d", ss.Entries()[1].Size)
			}
		})
	}
}

// TestListingCacheNeedsNoGenerationFile shows why sessions keep no
// generation file: on a filer that stamps times in whole seconds, reports
// ctime equal to mtime and directories with size 0 (fakeFiler: two changes
// within one second look alike there), another machine's cached listing is
// never served after a deletion, a move to cur/, or a rename by another
// program in cur/ — in the same filer second as that listing or later.
// Such a change stamps new/ or cur/ with a time no earlier than the
// caching session's lock, and a listing is cached only for directories
// unchanged for two seconds before that lock (listing.go), so the stamp
// differs.
func TestListingCacheNeedsNoGenerationFile(t *testing.T) {
	changes := map[string]func(t *testing.T, a *Store, filer *fakeFiler, mb Mailbox, entries []Entry){
		"deletion by another machine": func(t *testing.T, a *Store, _ *fakeFiler, mb Mailbox, entries []Entry) {
			sa, err := a.OpenSession(mb, sessOpts)
			if err != nil {
				t.Fatal(err)
			}
			if err := sa.Commit([]int{indexIn(t, sa, "new")}, nil); err != nil {
				t.Fatal(err)
			}
		},
		"move to cur/ by another machine": func(t *testing.T, a *Store, _ *fakeFiler, mb Mailbox, entries []Entry) {
			opts := sessOpts
			opts.MoveToCur = true
			sa, err := a.OpenSession(mb, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := sa.Commit(nil, []int{indexIn(t, sa, "new")}); err != nil {
				t.Fatal(err)
			}
		},
		"flag added in cur/ by an IMAP server": func(t *testing.T, _ *Store, filer *fakeFiler, mb Mailbox, _ []Entry) {
			flagOneInCur(t, filer, mb, "T")
		},
	}
	for name, change := range changes {
		for _, delay := range []time.Duration{0, 400 * time.Millisecond, time.Second, 3 * time.Second} {
			t.Run(fmt.Sprintf("%s after %v", name, delay), func(t *testing.T) {
				filer, _, st, root := filerMachines(t, 0, 0)
				a, b := st[0], st[1]
				mb := mailbox(root, "gen")
				deliverN(t, a, mb, 4)
				opts := sessOpts
				opts.MoveToCur = true
				seen, err := a.OpenSession(mb, opts) // two messages to cur/
				if err != nil {
					t.Fatal(err)
				}
				if err := seen.Commit(nil, []int{0, 1}); err != nil {
					t.Fatal(err)
				}
				filer.Advance(5 * time.Second)
				for i := range 2 {
					sb, err := b.OpenSession(mb, sessOpts)
					if err != nil {
						t.Fatal(err)
					}
					sb.Close()
					if i == 1 && sb.CacheResult() != "hit" {
						t.Fatalf("repeat login on an unchanged mailbox: %s, want hit", sb.CacheResult())
					}
				}
				// new/ and cur/ change, then B lists them within the same
				// filer second: a second change in that second leaves the
				// same stamps, which only the two-second rule catches.
				deliverN(t, a, mb, 1)
				flagOneInCur(t, filer, mb, "F")
				filer.Advance(300 * time.Millisecond)
				sb, err := b.OpenSession(mb, sessOpts)
				if err != nil {
					t.Fatal(err)
				}
				before := sb.Entries()
				sb.Close()
				filer.Advance(delay)
				change(t, a, filer, mb, before)
				sb, err = b.OpenSession(mb, sessOpts)
				if err != nil {
					t.Fatal(err)
				}
				defer sb.Close()
				if sb.CacheResult() == "hit" {
					t.Fatal("machine B served its cached listing after the mailbox changed")
				}
				if got, want := namesOf(sb.Entries()), namesOnDisk(t, mb); got != want {
					t.Fatalf("B lists %s, the Maildir holds %s", got, want)
				}
			})
		}
	}
}

// flagOneInCur adds flag to the first message in cur/ without it, as an
// IMAP server would (a rename on the filer).
func flagOneInCur(t *testing.T, filer *fakeFiler, mb Mailbox, flag string) {
	t.Helper()
	cur := filepath.Join(mb.Path, "cur")
	for _, n := range listDir(t, cur) {
		if !strings.HasSuffix(n, flag) {
			if err := filer.Rename(filepath.Join(cur, n), filepath.Join(cur, n+flag)); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("no message in cur/ to flag")
}

// indexIn is the index of a session's first entry in dir.
func indexIn(t *testing.T, s *Session, dir string) int {
	t.Helper()
	for i, e := range s.Entries() {
		if e.Dir == dir {
			return i
		}
	}
	t.Fatalf("no message in %s/", dir)
	return -1
}

func namesOf(entries []Entry) string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Dir+"/"+e.Name)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func namesOnDisk(t *testing.T, mb Mailbox) string {
	t.Helper()
	var out []string
	for _, dir := range []string{"new", "cur"} {
		for _, n := range listDir(t, filepath.Join(mb.Path, dir)) {
			out = append(out, dir+"/"+n)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
