package fsgate

import (
	"context"
	"fmt"
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

// volumeForTest is one volume: a mail root with its marker, a gate over
// inner, and a store over the gate.
type volumeForTest struct {
	root  string
	gate  *Gate
	store *store.Store
}

func newVolumeForTest(t *testing.T, name string, inner store.FS, o Options) *volumeForTest {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, ".mounted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	o.Volume = name
	g := ForVolume(inner, root, ".mounted", o)
	chown := false
	s, err := store.New(store.Options{MailRoot: root, MountMarker: ".mounted", Hostname: "mx.test", ESTALERetries: 2, FS: g.FS(), Chown: &chown})
	if err != nil {
		t.Fatal(err)
	}
	return &volumeForTest{root: root, gate: g, store: s}
}

func (v *volumeForTest) mailbox(user int) store.Mailbox {
	return store.Mailbox{Path: filepath.Join(v.root, "example.org", fmt.Sprintf("u%d", user), "Maildir"), UID: -1, GID: -1}
}

// countNew counts the messages in every new/ and tmp/ of the volume.
func (v *volumeForTest) countFiles(t *testing.T, sub string) int {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(v.root, "example.org", "*", "Maildir", sub, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(matches)
}

// The unit-level hang test: two volumes, one of whose filer hangs
// (every call blocks until the end of the test, then answers EIO as
// NFSv4.1 clients did at resume). Many concurrent deliveries to both:
// every delivery to the healthy volume succeeds, every one to the hung
// volume ends with a temporary failure, no more than MaxCalls+1 (the
// probe) goroutines are ever stuck in the hung filer, and nothing is in
// new/ that was not acknowledged.
func TestHungVolumeCostsOnlyItsUsers(t *testing.T) {
	const (
		deliveries = 200
		maxCalls   = 4
		users      = 10
	)
	opts := Options{MaxCalls: maxCalls, CallWait: 20 * time.Millisecond, ProbeInterval: time.Millisecond, ProbeTimeout: 20 * time.Millisecond}
	// The healthy filer has the same bound, but its calls may wait for a
	// slot as long as they need: they always come back.
	healthyOpts := opts
	healthyOpts.CallWait = time.Minute
	healthyOpts.LookupTimeout = time.Minute
	healthy := newVolumeForTest(t, "filer1", store.OSFS{}, healthyOpts)
	hang := newHangFS()
	released := false
	release := func() {
		if !released {
			released = true
			close(hang.release)
		}
	}
	t.Cleanup(release)
	hung := newVolumeForTest(t, "filer2", hang, opts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, v := range []*volumeForTest{healthy, hung} {
		go v.gate.Run(ctx)
	}

	type result struct {
		hung bool
		err  error
	}
	results := make(chan result, deliveries)
	var wg sync.WaitGroup
	var hungDone, healthyDone atomic.Int64
	for i := range deliveries {
		v, onHung := healthy, i%2 == 1
		if onHung {
			v = hung
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.store.Deliver(v.mailbox(i%users), strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)))
			if onHung {
				hungDone.Add(1)
			} else {
				healthyDone.Add(1)
			}
			results <- result{onHung, err}
		}()
	}
	// Every delivery ends but those stuck in the hung filer (at most
	// MaxCalls of them; the probe is stuck there too). A lookup given up
	// after LookupTimeout stays stuck there while its delivery is done:
	// hence at least, not exactly.
	for {
		stuck := hang.in.Load() - 1 // the probe
		if hungDone.Load()+stuck >= deliveries/2 && healthyDone.Load() == deliveries/2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if m := hang.max.Load(); m > maxCalls+1 {
		t.Errorf("%d goroutines were stuck in the hung filer at once, want at most MaxCalls+1 = %d", m, maxCalls+1)
	}
	release()
	wg.Wait()
	close(results)
	var failedTemp int
	for r := range results {
		switch {
		case !r.hung && r.err != nil:
			t.Errorf("delivery to the healthy volume failed: %v", r.err)
		case !r.hung:
		case r.err == nil:
			t.Errorf("delivery to the hung volume acknowledged")
		case !failure.As(r.err).Temporary():
			t.Errorf("delivery to the hung volume failed permanently: %v", r.err)
		default:
			failedTemp++
		}
	}
	if n := healthy.countFiles(t, "new"); n != deliveries/2 {
		t.Errorf("healthy volume: %d messages in new/, want %d (one per acknowledged delivery)", n, deliveries/2)
	}
	if n := healthy.countFiles(t, "tmp"); n != 0 {
		t.Errorf("healthy volume: %d files left in tmp/", n)
	}
	if n := hung.countFiles(t, "new"); n != 0 {
		t.Errorf("hung volume: %d messages in new/, none acknowledged", n)
	}
	if failedTemp != deliveries/2 {
		t.Errorf("%d deliveries to the hung volume failed temporarily, want %d", failedTemp, deliveries/2)
	}
}

// lostRenameFS carries a rename out, then the volume goes down and the
// reply is lost (EIO): the store's verification (an lstat of the target)
// is then refused by the gate.
type lostRenameFS struct {
	store.OSFS
	gate *Gate
}

func (l *lostRenameFS) Rename(oldname, newname string) error {
	if err := l.OSFS.Rename(oldname, newname); err != nil {
		return err
	}
	if strings.Contains(store.ResolvedPath(newname), "/new/") {
		l.gate.record(fmt.Errorf("probe: %w", os.ErrDeadlineExceeded))
		return &os.PathError{Op: "rename", Path: newname, Err: syscall.EIO}
	}
	return nil
}

// A refused lstat while verifying a publish whose reply was lost is a
// temporary failure (Postfix retries: a duplicate at worst, never a
// loss), not an error the store could take for "no such file" or "name
// taken".
func TestRefusedVerificationIsTemporary(t *testing.T) {
	inner := &lostRenameFS{}
	v := newVolumeForTest(t, "filer1", inner, Options{MaxCalls: 4, CallWait: time.Minute})
	inner.gate = v.gate
	_, err := v.store.Deliver(v.mailbox(1), strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	if err == nil {
		t.Fatal("delivery acknowledged although its publish could not be verified")
	}
	if fe := failure.As(err); !fe.Temporary() {
		t.Fatalf("unverifiable publish: %v (kind %v), want a temporary failure", err, fe.Kind)
	}
}

// stuckRenameFS holds the rename into new/ in the "kernel" until released,
// while the test marks the volume down (its probe timed out meanwhile);
// then the rename is carried out and answered: the filer is back, but
// the probe has not answered yet.
type stuckRenameFS struct {
	store.OSFS
	entered, release chan struct{}
}

func (s *stuckRenameFS) Rename(oldname, newname string) error {
	if strings.Contains(store.ResolvedPath(newname), "/new/") {
		close(s.entered)
		<-s.release
	}
	return s.OSFS.Rename(oldname, newname)
}

// TestCallAnsweredAfterHangMarksVolumeUp: a delivery whose rename into
// new/ was stuck in a hung filer and is answered when the filer comes
// back must not be failed by the gate because its probe has not noticed
// yet (CI's TestScaleOut: the calls after the rename, the directory's
// identity and fsync, were refused, the withdrawal too, and the 4xx left
// the message in new/ for Postfix to deliver again). A call in flight
// longer than the probe timeout that is answered is the filer answering:
// the volume is up.
func TestCallAnsweredAfterHangMarksVolumeUp(t *testing.T) {
	inner := &stuckRenameFS{entered: make(chan struct{}), release: make(chan struct{})}
	v := newVolumeForTest(t, "filer1", inner, Options{MaxCalls: 4, ProbeTimeout: 50 * time.Millisecond})
	type result struct {
		d   store.Delivery
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := v.store.Deliver(v.mailbox(1), strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
		done <- result{d, err}
	}()
	<-inner.entered
	time.Sleep(60 * time.Millisecond) // in flight longer than the probe timeout
	v.gate.record(fmt.Errorf("probe not answered: %w", syscall.ETIMEDOUT))
	close(inner.release)
	r := <-done
	inNew := v.countFiles(t, "new")
	switch {
	case r.err == nil && inNew == 1:
	case r.err != nil && inNew == 0:
		t.Errorf("delivery failed (%v) although the filer answered its rename; nothing in new/, so no duplicate, but the retry was needless", r.err)
	default:
		t.Fatalf("delivery answered %v with %d messages in new/ (a 4xx with the message stored is a duplicate)", r.err, inNew)
	}
	if err := v.gate.Err(); err != nil {
		t.Errorf("volume still down after a call stuck in it was answered: %v", err)
	}
}

// TestMountGuardRefusedSaysVolumeUnavailable: while the volume is down, a
// delivery is refused at the mount guard with the gate's answer ("mail
// volume unavailable"), not "mail store not mounted", which would send
// an administrator to check the mounts of a filer that is only hung.
func TestMountGuardRefusedSaysVolumeUnavailable(t *testing.T) {
	v := newVolumeForTest(t, "filer1", nil, Options{MaxCalls: 4})
	v.gate.record(fmt.Errorf("probe not answered: %w", syscall.ETIMEDOUT))
	_, err := v.store.Deliver(v.mailbox(1), strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	fe := failure.As(err)
	if err == nil || !fe.Temporary() || fe.Reason != "mail volume unavailable" {
		t.Fatalf("delivery on a down volume: %v (reason %q), want a temporary \"mail volume unavailable\"", err, fe.Reason)
	}
	if !strings.Contains(err.Error(), "mount guard") {
		t.Errorf("error %q does not name the operation refused", err)
	}
}
