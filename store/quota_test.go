package store

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// putMessages creates messages in dir (new/ or cur/ of a Maildir) whose
// names carry their sizes (",S="), as every Maildir++ writer names them, so
// a recount believes the names and the files themselves can stay empty.
func putMessages(t testing.TB, dir string, sizes ...int64) {
	t.Helper()
	for i, size := range sizes {
		name := fmt.Sprintf("1700000000.M%06dP1Q%dR0.old,S=%d,W=%d:2,S", i, i, size, size)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func writeMaildirsize(t testing.TB, mb Mailbox, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(mb.Path, maildirsizeName), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readMaildirsize(t testing.TB, mb Mailbox) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(mb.Path, maildirsizeName))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// readdirCounter counts directory listings, which is what a recount costs.
func readdirCounter(n *atomic.Int32) func(op, path string, real func() error) error {
	return func(op, path string, real func() error) error {
		if op == "readdir" {
			n.Add(1)
		}
		return real()
	}
}

// A POP3 removal ("-600 -2") and a delivery ("10000 1", longer) appended at
// the same cached end of file on two NFS clients: the delivery's line
// overwrites the removal's entirely. The file parses, and says 4 messages
// where the Maildir holds 2. A delivery must not be refused from it, at RCPT
// time or at DATA time, and the file must be put right.
func TestQuotaLostRemovalIsRecountedBeforeRefusing(t *testing.T) {
	setup := func(t *testing.T) (*Store, Mailbox) {
		s, root := newTestStore(t, nil)
		mb := mailbox(root, "lost")
		mb.Quota = Quota{Messages: 4}
		if err := s.EnsureMaildir(mb); err != nil {
			t.Fatal(err)
		}
		putMessages(t, filepath.Join(mb.Path, "cur"), 300, 10000)
		writeMaildirsize(t, mb, "4C\n900 3\n10000 1\n")
		return s, mb
	}
	t.Run("RCPT", func(t *testing.T) {
		s, mb := setup(t)
		if err := s.CheckQuota(mb, 0); err != nil {
			t.Fatalf("RCPT-time check refused from a file that lost a removal: %v", err)
		}
		if got := readMaildirsize(t, mb); got != "4C\n10300 2\n" {
			t.Errorf("maildirsize = %q, want the recount", got)
		}
	})
	t.Run("DATA", func(t *testing.T) {
		s, mb := setup(t)
		if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
			t.Fatalf("delivery refused from a file that lost a removal: %v", err)
		}
		checkOutcome(t, mb, true, testMessage)
		want := fmt.Sprintf("4C\n10300 2\n%d 1\n", len(testMessage))
		if got := readMaildirsize(t, mb); got != want {
			t.Errorf("maildirsize = %q, want the recount plus this delivery %q", got, want)
		}
	})
}

// A removal "-660000 -2" overlaid by a shorter delivery line "58 1" leaves
// "58 1\n00 -2\n": every line parses as two numbers, and the total
// overstates the Maildir by 660000 bytes.
func TestQuotaOverlaidLineIsRecounted(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "overlaid")
	mb.Quota = Quota{Bytes: 1000000}
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	putMessages(t, filepath.Join(mb.Path, "cur"), 339990, 58)
	writeMaildirsize(t, mb, "1000000S\n999990 3\n58 1\n00 -2\n")

	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatalf("delivery refused from an overlaid maildirsize: %v", err)
	}
	checkOutcome(t, mb, true, testMessage)
	want := fmt.Sprintf("1000000S\n340048 2\n%d 1\n", len(testMessage))
	if got := readMaildirsize(t, mb); got != want {
		t.Errorf("maildirsize = %q, want %q", got, want)
	}
}

// A recount by anyone that is older than the trust window is not enough to
// refuse for good: messages may have gone without maildirsize hearing of it.
func TestQuotaOldRecountIsRecheckedBeforeRefusing(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "old")
	mb.Quota = Quota{Messages: 2}
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	putMessages(t, filepath.Join(mb.Path, "cur"), 300)
	writeMaildirsize(t, mb, "2C\n600 2\n")
	old := time.Now().Add(-5 * time.Minute)
	if err := os.Chtimes(filepath.Join(mb.Path, maildirsizeName), old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatalf("refused from a 5-minute-old count: %v", err)
	}
}

// A Maildir that is really full is still refused permanently, after one
// recount, and the recount is written back so that the next check (here
// the cheap RCPT-time one) refuses without listing the Maildir again.
func TestQuotaTrulyFullIsRefusedAfterRecount(t *testing.T) {
	ffs := &faultFS{}
	s, root := newTestStore(t, ffs)
	mb := mailbox(root, "full")
	mb.Quota = Quota{Messages: 2}
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	putMessages(t, filepath.Join(mb.Path, "cur"), 300, 300)
	writeMaildirsize(t, mb, "2C\n0 0\n300 1\n300 1\n")

	var listings atomic.Int32
	ffs.hook = readdirCounter(&listings)
	_, err := s.Deliver(mb, bytes.NewReader(testMessage))
	if fe := failure.As(err); fe == nil || fe.Kind != failure.OverQuota || fe.Temporary() {
		t.Fatalf("full Maildir: want permanent over-quota, got %v", err)
	}
	if listings.Load() == 0 {
		t.Error("refused permanently without recounting an appended-to maildirsize")
	}
	if got := readMaildirsize(t, mb); got != "2C\n600 2\n" {
		t.Errorf("maildirsize after the recount = %q", got)
	}

	listings.Store(0)
	if fe := failure.As(s.CheckQuota(mb, 0)); fe == nil || fe.Kind != failure.OverQuota || fe.Temporary() {
		t.Fatalf("RCPT-time check on a full Maildir: %v", fe)
	}
	if n := listings.Load(); n != 0 {
		t.Errorf("RCPT-time check listed %d directories; a fresh recount should be trusted", n)
	}
	checkOutcome(t, mb, false, nil)
}

// While this store recounted a mailbox a moment ago, a refusal that would
// need another recount is answered temporarily instead of recounting once
// per refused message; once the interval is over it recounts again.
func TestQuotaRecountIsRateLimited(t *testing.T) {
	ffs := &faultFS{}
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	s, root := newTestStore(t, ffs, func(o *Options) {
		o.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	mb := mailbox(root, "flood")
	mb.Quota = Quota{Messages: 2}
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	putMessages(t, filepath.Join(mb.Path, "cur"), 300, 300)
	writeMaildirsize(t, mb, "2C\n0 0\n300 1\n300 1\n")

	var listings atomic.Int32
	ffs.hook = readdirCounter(&listings)
	if fe := failure.As(s.CheckQuota(mb, 100)); fe == nil || fe.Temporary() {
		t.Fatalf("first refusal: want permanent, got %v", fe)
	}
	// Another machine appends to the recount: the file is no longer one
	// whole recount and cannot be trusted for a permanent refusal.
	writeMaildirsize(t, mb, "2C\n600 2\n-300 -1\n300 1\n")
	listings.Store(0)
	fe := failure.As(s.CheckQuota(mb, 100))
	if fe == nil || fe.Kind != failure.OverQuota || !fe.Temporary() {
		t.Fatalf("refusal within the recount interval: want temporary over-quota, got %v", fe)
	}
	if n := listings.Load(); n != 0 {
		t.Errorf("recounted again within the interval (%d listings)", n)
	}

	clock.Add(int64(2 * recountInterval))
	if fe := failure.As(s.CheckQuota(mb, 100)); fe == nil || fe.Temporary() {
		t.Fatalf("after the interval: want permanent after a recount, got %v", fe)
	}
	if listings.Load() == 0 {
		t.Error("no recount after the interval")
	}
}

// nfsAppendFS emulates an NFS client's O_APPEND: the client writes at the
// end of file it learned when it opened the file, so two clients appending
// at once write at the same offset and the later write overlays the
// earlier. afterOpen and beforeWrite let a test order two clients' steps.
type nfsAppendFS struct {
	OSFS
	afterOpen   func()
	beforeWrite func()
}

func (n *nfsAppendFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if flag&os.O_APPEND == 0 {
		return n.OSFS.OpenFile(name, flag, perm)
	}
	f, err := os.OpenFile(name, flag&^os.O_APPEND, perm)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if n.afterOpen != nil {
		n.afterOpen()
	}
	return &cachedEOFFile{osFile: osFile{f}, eof: fi.Size(), fs: n}, nil
}

type cachedEOFFile struct {
	osFile
	eof int64
	fs  *nfsAppendFS
}

func (c *cachedEOFFile) Write(p []byte) (int, error) {
	if c.fs.beforeWrite != nil {
		c.fs.beforeWrite()
	}
	n, err := c.f.WriteAt(p, c.eof)
	c.eof += int64(n)
	return n, err
}

// Two machines update maildirsize at once: machine A records a POP3
// removal of two messages, machine B a delivery. Both open the file before
// either writes; A writes first, then B's longer line lands on top of it.
// The file then parses and says 4 messages where the Maildir holds 2; the
// next delivery must be accepted all the same.
func TestQuotaConcurrentNFSAppends(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, testMarker), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	no := false
	aOpened, bOpened, aWrote := make(chan struct{}), make(chan struct{}), make(chan struct{})
	fsA := &nfsAppendFS{
		afterOpen:   func() { close(aOpened) },
		beforeWrite: func() { <-bOpened },
	}
	fsB := &nfsAppendFS{
		afterOpen:   func() { <-aOpened; close(bOpened) },
		beforeWrite: func() { <-aWrote },
	}
	newStore := func(host string, fsys FS) *Store {
		s, err := New(Options{MailRoot: root, MountMarker: testMarker, Hostname: host, FS: fsys, Chown: &no})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := newStore("mx-a", fsA), newStore("mx-b", fsB)
	mb := mailbox(root, "shared")
	mb.Quota = Quota{Messages: 4}
	if err := a.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	cur := filepath.Join(mb.Path, "cur")
	putMessages(t, cur, 300, 300, 300)
	writeMaildirsize(t, mb, "4C\n900 3\n")

	big := bytes.Repeat([]byte("x"), 10000) // "10000 1\n" is as long as "-600 -2\n"
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(aWrote)
		// POP3 on A deletes two messages, then records it.
		names, _ := os.ReadDir(cur)
		for _, n := range names[:2] {
			os.Remove(filepath.Join(cur, n.Name()))
		}
		a.RecordRemoval(mb, 600, 2)
	}()
	if _, err := b.Deliver(mb, bytes.NewReader(big)); err != nil {
		t.Fatalf("delivery on B: %v", err)
	}
	wg.Wait()
	if got := readMaildirsize(t, mb); got != "4C\n900 3\n10000 1\n" {
		t.Fatalf("the emulated NFS appends did not overlay as planned: %q", got)
	}

	fsA.afterOpen, fsA.beforeWrite = nil, nil
	if _, err := a.Deliver(mb, bytes.NewReader(testMessage)); err != nil {
		t.Fatalf("delivery after the overlaid appends (Maildir holds 2 of 4): %v", err)
	}
	want := fmt.Sprintf("4C\n10300 2\n%d 1\n", len(testMessage))
	if got := readMaildirsize(t, mb); got != want {
		t.Errorf("maildirsize = %q, want %q", got, want)
	}
}

func TestParseMaildirsize(t *testing.T) {
	tests := []struct {
		name    string
		def     string // "" means "100S,5C"
		data    string
		ok      bool
		usage   Usage
		recount bool // the file is one whole recount
	}{
		{name: "recount only", data: "100S,5C\n40 2\n", ok: true, usage: Usage{40, 2}, recount: true},
		{name: "recount and appends", data: "100S,5C\n40 2\n10 1\n-5 -1\n", ok: true, usage: Usage{45, 2}},
		{name: "Courier's padded lines", data: "100S,5C\n          40            2\n          10            1\n", ok: true, usage: Usage{50, 3}},
		{name: "Dovecot's size and count change together", data: "100S,5C\n40 2\n30 0\n", ok: true, usage: Usage{70, 2}},
		{name: "other definition", def: "200S,5C", data: "100S,5C\n40 2\n", ok: false},
		{name: "torn: no final newline", data: "100S,5C\n40 2\n10", ok: false},
		{name: "one number", data: "100S,5C\n40 2\n1\n", ok: false},
		{name: "hole of zero bytes", data: "100S,5C\n40 2\n\x00\x00\x00\x0010 1\n", ok: false},
		{name: "empty line left by a shorter overlay", data: "100S,5C\n40 2\n12 1\n\n", ok: false},
		{name: "leading zero left by an overlay", data: "100S,5C\n40 2\n12 1\n00 -2\n", ok: false},
		{name: "plus sign", data: "100S,5C\n40 2\n+12 1\n", ok: false},
		{name: "minus zero", data: "100S,5C\n40 2\n-0 -1\n", ok: false},
		{name: "bytes and count of opposite signs", data: "100S,5C\n40 2\n21 -2\n", ok: false},
		{name: "messages without bytes", data: "100S,5C\n40 2\n0 -20\n", ok: false},
		{name: "negative total", data: "100S,5C\n40 2\n-50 -3\n", ok: false},
		{name: "a recount of one zero-byte message", def: "5C", data: "5C\n0 1\n", ok: true, usage: Usage{0, 1}, recount: true},
		{name: "no data line", def: "5C", data: "5C\n", ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			def := tc.def
			if def == "" {
				def = "100S,5C"
			}
			fig, ok := parseMaildirsize([]byte(tc.data), def)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tc.ok, fig)
			}
			if !ok {
				return
			}
			if fig.usage != tc.usage || fig.wholeRecount() != tc.recount {
				t.Errorf("got %+v (whole recount %v), want %+v (%v)", fig.usage, fig.wholeRecount(), tc.usage, tc.recount)
			}
		})
	}
}

// BenchmarkQuotaRecount measures a recount of a 100 000-message Maildir
// (half in new/, half in cur/), what a delivery that would be refused for
// quota costs at most once per recountInterval per mailbox and machine.
// "sized" names carry ,S= (nfsdrop, Dovecot, Courier); "unsized" names make
// the recount stat every file.
// Run: go test -run '^$' -bench QuotaRecount -benchtime 10x ./store/
// (NFSDROP_BENCH_DIR=/mnt/nfs/... to measure on NFS).
func BenchmarkQuotaRecount(b *testing.B) {
	const messages = 100000
	for _, sized := range []bool{true, false} {
		name := "unsized"
		if sized {
			name = "sized"
		}
		b.Run(fmt.Sprintf("%s/%d", name, messages), func(b *testing.B) {
			root := benchRoot(b)
			os.WriteFile(filepath.Join(root, testMarker), nil, 0o600)
			no := false
			s, err := New(Options{MailRoot: root, MountMarker: testMarker, Hostname: "bench", Chown: &no})
			if err != nil {
				b.Fatal(err)
			}
			mb := Mailbox{Path: filepath.Join(root, "box"), UID: -1, GID: -1, Quota: Quota{Messages: messages}}
			if err := s.EnsureMaildir(mb); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < messages; i++ {
				dir := filepath.Join(mb.Path, [2]string{"new", "cur"}[i%2])
				n := fmt.Sprintf("1700000000.M%06dP1Q%dR0.bench", i%1000000, i)
				if sized {
					n += ",S=2048,W=2100"
				}
				if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				u, err := s.recalculate(mb)
				if err != nil || u.Messages != messages {
					b.Fatalf("recount: %+v %v", u, err)
				}
			}
		})
	}
}
