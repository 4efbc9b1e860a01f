package fsgate

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// hangFS is a filer that stopped answering: every call blocks until
// release is closed, then fails with EIO (what NFSv4.1 clients answered
// at resume in the lab). It counts the goroutines inside it.
type hangFS struct {
	store.OSFS
	release chan struct{}
	entered chan struct{} // one send (non-blocking) per call entering
	in, max atomic.Int64
}

func newHangFS() *hangFS {
	return &hangFS{release: make(chan struct{}), entered: make(chan struct{}, 1024)}
}

func (h *hangFS) hang() error {
	n := h.in.Add(1)
	for {
		m := h.max.Load()
		if n <= m || h.max.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case h.entered <- struct{}{}:
	default:
	}
	<-h.release
	h.in.Add(-1)
	return &os.PathError{Op: "nfs", Path: "hung", Err: syscall.EIO}
}

func (h *hangFS) OpenFile(string, int, fs.FileMode) (store.File, error) { return nil, h.hang() }
func (h *hangFS) Link(string, string) error                             { return h.hang() }
func (h *hangFS) Rename(string, string) error                           { return h.hang() }
func (h *hangFS) Remove(string) error                                   { return h.hang() }
func (h *hangFS) Lstat(string) (store.Info, error)                      { return store.Info{}, h.hang() }
func (h *hangFS) Mkdir(string, fs.FileMode) error                       { return h.hang() }
func (h *hangFS) Lchown(string, int, int) error                         { return h.hang() }
func (h *hangFS) SyncDir(string) error                                  { return h.hang() }
func (h *hangFS) ReadDirNames(string) ([]string, error)                 { return nil, h.hang() }
func (h *hangFS) TouchNow(string) error                                 { return h.hang() }
func (h *hangFS) Symlink(string, string) error                          { return h.hang() }
func (h *hangFS) Readlink(string) (string, error)                       { return "", h.hang() }
func (h *hangFS) LstatFresh(string) (store.Info, error)                 { return store.Info{}, h.hang() }
func (h *hangFS) OpenDir(string) (store.Dir, error)                     { return nil, h.hang() }

// waitEntered waits until n more calls entered h.
func (h *hangFS) waitEntered(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		<-h.entered
	}
}

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu       sync.Mutex
	ups      []bool
	refused  map[string]int
	inFlight int
	maxIn    int
	changed  chan bool // each VolumeUp, non-blocking
}

func newRecorder() *recorder {
	return &recorder{refused: map[string]int{}, changed: make(chan bool, 64)}
}

func (r *recorder) VolumeUp(up bool) {
	r.mu.Lock()
	r.ups = append(r.ups, up)
	r.mu.Unlock()
	select {
	case r.changed <- up:
	default:
	}
}

func (r *recorder) CallsInFlight(n int) {
	r.mu.Lock()
	r.inFlight = n
	r.maxIn = max(r.maxIn, n)
	r.mu.Unlock()
}

func (r *recorder) CallRefused(reason string) {
	r.mu.Lock()
	r.refused[reason]++
	r.mu.Unlock()
}

// waitFor waits for the next VolumeUp(want), skipping the initial report.
func (r *recorder) waitFor(t *testing.T, want bool) {
	t.Helper()
	for up := range r.changed {
		if up == want {
			return
		}
	}
}

// checkRefused checks err is the gate's refusal for reason: temporary,
// ETIMEDOUT, never ENOENT or EEXIST.
func checkRefused(t *testing.T, err error, reason string) {
	t.Helper()
	var r *RefusedError
	if !errors.As(err, &r) || r.Reason != reason {
		t.Fatalf("err = %v, want a refusal (%s)", err, reason)
	}
	if fe := failure.As(err); !fe.Temporary() {
		t.Fatalf("refusal %v is not temporary", err)
	}
	if !errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EEXIST) {
		t.Fatalf("refusal %v: want ETIMEDOUT in its chain and neither ENOENT nor EEXIST", err)
	}
}

// At most MaxCalls calls are in flight; the next waits CallWait, then is
// refused as busy; once a slot is free, calls go through again.
func TestSlotBound(t *testing.T) {
	h := newHangFS()
	rec := newRecorder()
	g := New(h, Options{Volume: "v", MaxCalls: 2, CallWait: 10 * time.Millisecond, Observer: rec})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); g.FS().Lstat("/x") }()
	}
	h.waitEntered(t, 2)
	_, err := g.FS().Lstat("/y")
	checkRefused(t, err, ReasonBusy)
	if h.max.Load() != 2 {
		t.Fatalf("%d calls reached the filesystem, want 2", h.max.Load())
	}
	close(h.release)
	wg.Wait()
	if _, err := g.FS().Lstat("/y"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("after the slots freed: %v, want the filesystem's own answer (EIO)", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.maxIn != 2 || rec.inFlight != 0 || rec.refused[ReasonBusy] != 1 {
		t.Fatalf("observer: max in flight %d, now %d, busy refusals %d; want 2, 0, 1", rec.maxIn, rec.inFlight, rec.refused[ReasonBusy])
	}
}

// A call waiting for a slot gets it when one frees within CallWait.
func TestCallWaitsForSlot(t *testing.T) {
	h := newHangFS()
	g := New(h, Options{Volume: "v", MaxCalls: 1, CallWait: time.Hour})
	first := make(chan error, 1)
	go func() { _, err := g.FS().Lstat("/a"); first <- err }()
	h.waitEntered(t, 1)
	second := make(chan error, 1)
	go func() { _, err := g.FS().Lstat("/b"); second <- err }()
	close(h.release)
	for _, ch := range []chan error{first, second} {
		if err := <-ch; !errors.Is(err, syscall.EIO) || IsRefused(err) {
			t.Fatalf("call: %v, want the filesystem's answer", err)
		}
	}
	if h.max.Load() != 1 {
		t.Fatalf("%d calls in the filesystem at once, want 1", h.max.Load())
	}
}

// A probe that fails marks the volume down: calls then fail at once
// without reaching the filesystem, Err says so; a probe that answers
// brings it back. Each transition is logged and reported once.
func TestDownFailsFastAndRecovers(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, ".mounted")
	var calls atomic.Int64
	counting := &countFS{n: &calls}
	rec := newRecorder()
	var logs syncBuffer
	g := ForVolume(counting, dir, ".mounted", Options{Volume: "filer2", Observer: rec, Logger: newTextLogger(&logs)})
	ctx := context.Background()
	g.probe(ctx) // marker missing: down
	if err := g.Err(); err == nil {
		t.Fatal("Err() = nil after a failed probe")
	} else {
		checkRefused(t, err, ReasonDown)
	}
	g.probe(ctx) // still down: no second report
	before := calls.Load()
	_, err := g.FS().Lstat(marker)
	checkRefused(t, err, ReasonDown)
	if calls.Load() != before {
		t.Fatal("a call on a down volume reached the filesystem")
	}
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	g.probe(ctx)
	g.probe(ctx)
	if err := g.Err(); err != nil {
		t.Fatalf("Err() = %v after a probe answered", err)
	}
	if _, err := g.FS().Lstat(marker); err != nil {
		t.Fatalf("call after recovery: %v", err)
	}
	rec.mu.Lock()
	ups := rec.ups
	refusedDown := rec.refused[ReasonDown]
	rec.mu.Unlock()
	if want := []bool{true, false, true}; !equalBools(ups, want) {
		t.Fatalf("VolumeUp reports %v, want %v (initial, down, up: once each)", ups, want)
	}
	if refusedDown != 1 {
		t.Fatalf("down refusals %d, want 1", refusedDown)
	}
	out := logs.String()
	if n := countSubstr(out, "volume down"); n != 1 {
		t.Fatalf("log has %d 'volume down' lines, want 1:\n%s", n, out)
	}
	if n := countSubstr(out, "volume up again"); n != 1 || countSubstr(out, "volume=filer2") != 2 {
		t.Fatalf("log should name the volume on one down and one up line:\n%s", out)
	}
}

// A probe stuck in the kernel marks the volume down after ProbeTimeout
// and is waited for, never repeated, while it is stuck: probe returns
// only once the stuck probe answered. When it answers, the volume is up.
func TestStuckProbe(t *testing.T) {
	release := make(chan struct{})
	var released atomic.Bool
	var started atomic.Int64
	probe := func(store.FS) error {
		if started.Add(1) == 1 {
			<-release
		}
		return nil
	}
	rec := newRecorder()
	g := New(store.OSFS{}, Options{Volume: "v", Probe: probe, ProbeTimeout: time.Millisecond, Observer: rec})
	returned := make(chan bool, 1)
	go func() { g.probe(context.Background()); returned <- released.Load() }()
	rec.waitFor(t, false)
	_, err := g.FS().Lstat("/")
	checkRefused(t, err, ReasonDown)
	released.Store(true)
	close(release)
	if !<-returned {
		t.Fatal("probe returned while its probe was still stuck (a second one would follow)")
	}
	rec.waitFor(t, true)
	if started.Load() != 1 {
		t.Fatalf("%d probes started, want 1", started.Load())
	}
	if _, err := g.FS().Lstat("/"); err != nil {
		t.Fatalf("after the probe answered: %v", err)
	}
}

// Run probes until its context ends, one probe at a time.
func TestRunProbesOneAtATime(t *testing.T) {
	var concurrent, maxConcurrent, n atomic.Int64
	probe := func(store.FS) error {
		c := concurrent.Add(1)
		defer concurrent.Add(-1)
		if c > maxConcurrent.Load() {
			maxConcurrent.Store(c)
		}
		if n.Add(1) == 3 {
			return errors.New("marker gone")
		}
		return nil
	}
	rec := newRecorder()
	g := New(store.OSFS{}, Options{Volume: "v", Probe: probe, ProbeInterval: time.Microsecond, Observer: rec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	rec.waitFor(t, false) // third probe
	rec.waitFor(t, true)  // fourth
	cancel()
	<-done
	if maxConcurrent.Load() != 1 {
		t.Fatalf("%d probes in flight at once", maxConcurrent.Load())
	}
}

// File and Dir methods take slots too: with the only slot held, each of
// them is refused as busy.
func TestFileAndDirMethodsGated(t *testing.T) {
	dir := t.TempDir()
	h := &switchFS{}
	g := New(h, Options{Volume: "v", MaxCalls: 1, CallWait: time.Millisecond})
	f, err := g.FS().OpenFile(filepath.Join(dir, "f"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d, err := g.FS().OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Hold the only slot.
	g.slots <- struct{}{}
	for name, call := range map[string]func() error{
		"Write":       func() error { _, err := f.Write([]byte("x")); return err },
		"Read":        func() error { _, err := f.Read(make([]byte, 1)); return err },
		"Sync":        f.Sync,
		"Stat":        func() error { _, err := f.Stat(); return err },
		"Chown":       func() error { return f.Chown(-1, -1) },
		"Dir.ID":      func() error { _, err := d.ID(); return err },
		"OpenBeneath": func() error { _, err := d.OpenBeneath("sub", -1); return err },
	} {
		checkRefusedNamed(t, name, call(), ReasonBusy)
	}
	<-g.slots
	sub, err := d.OpenBeneath("sub", -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sub.(gatedDir); !ok {
		t.Fatalf("OpenBeneath returned %T, want a gated Dir", sub)
	}
	for _, c := range []func() error{f.Close, d.Close, sub.Close} {
		if err := c(); err != nil {
			t.Fatal(err)
		}
	}
	if len(g.slots) != 0 {
		t.Fatalf("%d slots held after every call ended", len(g.slots))
	}
}

func checkRefusedNamed(t *testing.T, name string, err error, reason string) {
	t.Helper()
	var r *RefusedError
	if !errors.As(err, &r) || r.Reason != reason {
		t.Errorf("%s: %v, want a %s refusal", name, err, reason)
	}
}

// Close never leaks a slot or a descriptor: a Close refused (volume
// down) still closes the file once a slot is free, and the slot comes
// back.
func TestCloseNeverLeaks(t *testing.T) {
	dir := t.TempDir()
	closed := make(chan struct{})
	h := &switchFS{onClose: func() { close(closed) }}
	g := New(h, Options{Volume: "v", MaxCalls: 1, CallWait: time.Hour})
	for range 100 { // closes that get their slot release it
		f, err := g.FS().OpenFile(filepath.Join(dir, "f"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.(gatedFile).f.(*switchFile).File.Close(); err != nil { // the real close
			t.Fatal(err)
		}
		f.(gatedFile).f.(*switchFile).noop = true
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	f, err := g.FS().OpenFile(filepath.Join(dir, "f"), os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	g.record(errors.New("probe failed"))
	checkRefused(t, f.Close(), ReasonDown)
	<-closed // closed in the background all the same
	g.record(nil)
	if _, err := g.FS().Lstat(dir); err != nil { // CallWait is an hour: only a free slot lets this through
		t.Fatalf("after the background close: %v", err)
	}
}

// switchFS is the real filesystem with files that report their close.
type switchFS struct {
	store.OSFS
	onClose func()
}

func (s *switchFS) OpenFile(name string, flag int, perm fs.FileMode) (store.File, error) {
	f, err := s.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &switchFile{File: f, onClose: s.onClose}, nil
}

type switchFile struct {
	store.File
	onClose func()
	noop    bool // already closed by the test
}

func (f *switchFile) Close() error {
	if f.noop {
		return nil
	}
	err := f.File.Close()
	if f.onClose != nil {
		f.onClose()
	}
	return err
}

// countFS counts the calls that reach the real filesystem (Lstat only:
// what the tests use).
type countFS struct {
	store.OSFS
	n *atomic.Int64
}

func (c *countFS) Lstat(name string) (store.Info, error) {
	c.n.Add(1)
	return c.OSFS.Lstat(name)
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func countSubstr(s, sub string) int { return strings.Count(s, sub) }

// TestLookupGivenUp: a lookup the filer does not answer is given up after
// LookupTimeout (a temporary failure, reason "slow"), so an RCPT or a
// login does not wait for a hung filer; the call keeps its slot until the
// kernel answers, so the bound on calls in flight holds. A call that
// changes something (Remove) is waited for.
func TestLookupGivenUp(t *testing.T) {
	hang := newHangFS()
	g := New(hang, Options{Volume: "filer2", MaxCalls: 1, CallWait: time.Second, LookupTimeout: 20 * time.Millisecond})
	_, err := g.FS().Readlink("/srv/mail/filer2/x")
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != ReasonSlow || !failure.As(err).Temporary() {
		t.Fatalf("Readlink on a hung filer: %v, want a temporary refusal for a slow lookup", err)
	}
	// The given-up call still holds the only slot.
	if _, err := g.FS().ReadDirNames("/srv/mail/filer2/d"); !errors.As(err, &re) || re.Reason != ReasonBusy {
		t.Fatalf("ReadDirNames while the given-up Readlink is in the filer: %v, want busy", err)
	}
	removed := make(chan error, 1)
	close(hang.release)
	<-hang.entered
	go func() { removed <- g.FS().Remove("/srv/mail/filer2/y") }()
	if err := <-removed; errors.As(err, &re) {
		t.Fatalf("Remove once the filer answers: %v, want the filer's own answer", err)
	}
}
