package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// moveEnv is two volumes: a and a2 are two machines on the source volume,
// b the destination volume's store; alice's Maildir moves from a to b.
type moveEnv struct {
	t            *testing.T
	a, a2, b     *Store
	fa, fb       *faultFS
	srcMb, dstMb Mailbox
	// want is what the mailbox must hold: base name to content; names the
	// exact name (sub/name) of the messages whose UIDL must not change.
	want  map[string]string
	names map[string]string
	// folder is the files of Maildir++ folders: rel path to content.
	folder map[string]string
	uidls  []string
	n      int
}

const moveVolume = "vol2"

func newMoveEnv(t *testing.T) *moveEnv {
	t.Helper()
	fa, fb := &faultFS{}, &faultFS{}
	a, rootA := newTestStore(t, fa)
	b, rootB := newTestStore(t, fb, func(o *Options) { o.Hostname = "mx1.vol2" })
	no := false
	a2, err := New(Options{MailRoot: rootA, MountMarker: testMarker, Hostname: "mx2.test", Chown: &no})
	if err != nil {
		t.Fatal(err)
	}
	e := &moveEnv{t: t, a: a, a2: a2, b: b, fa: fa, fb: fb,
		srcMb: mailbox(rootA, "alice"), dstMb: mailbox(rootB, "alice"),
		want: map[string]string{}, names: map[string]string{}, folder: map[string]string{}}
	e.populate()
	return e
}

// populate gives alice messages in new/ and in cur/ with flags, the
// legacy UIDL lists and maildirsize, and records the UIDLs shown.
func (e *moveEnv) populate() {
	t := e.t
	for i := 0; i < 4; i++ {
		if !e.deliver(e.a) {
			t.Fatal("populate: delivery failed")
		}
	}
	ss, err := e.a.OpenSession(e.srcMb, SessionOptions{LockStale: time.Minute, MoveToCur: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.Commit(nil, []int{0, 1}); err != nil { // to cur/ with S
		t.Fatal(err)
	}
	cur := filepath.Join(e.srcMb.Path, "cur")
	names := listDir(t, cur)
	if len(names) != 2 {
		t.Fatalf("cur/ has %v", names)
	}
	flagged := strings.TrimSuffix(names[0], ":2,S") + ":2,FS"
	if err := os.Rename(filepath.Join(cur, names[0]), filepath.Join(cur, flagged)); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"dovecot-uidlist":        "3 V1 N5\n1 x\n",
		"nfsdrop-uidls.dovecot":  snapshotMagic + " dovecot 3\n.\n",
		"courierpop3dsizelist":   "/2\n",
		"dovecot-keywords":       "0 $Junk\n",
		maildirsizeName:          "1000000S,100C\n999 99\n",
		"dovecot-uidlist.lock":   "stale\n",
		"nfsdrop-uidls.courier":  snapshotMagic + " courier -\n.\n",
		"subscriptions-not-kept": "x\n",
	} {
		if err := os.WriteFile(filepath.Join(e.srcMb.Path, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"new", "cur"} {
		for _, n := range listDir(t, filepath.Join(e.srcMb.Path, sub)) {
			e.names[BaseName(n)] = sub + "/" + n
		}
	}
	e.addFolder(".Sent", map[string]string{"cur/1700000000.M1P1.sent,S=5:2,S": "sent\n", "maildirfolder": ""})
	e.uidls = e.listUIDLs(e.a, e.srcMb)
}

// addFolder makes a Maildir++ folder in the source with files.
func (e *moveEnv) addFolder(name string, files map[string]string) {
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(e.srcMb.Path, name, sub), 0o700); err != nil {
			e.t.Fatal(err)
		}
	}
	for rel, data := range files {
		if err := os.WriteFile(filepath.Join(e.srcMb.Path, name, rel), []byte(data), 0o600); err != nil {
			e.t.Fatal(err)
		}
		e.folder[name+"/"+rel] = data
	}
}

// deliver delivers a fresh message to alice's old place through s and
// records it as wanted when it was acknowledged.
func (e *moveEnv) deliver(s *Store) bool {
	e.n++
	body := fmt.Sprintf("Subject: %d\n\nmessage %d\n", e.n, e.n)
	d, err := s.Deliver(e.srcMb, strings.NewReader(body))
	if err != nil {
		return false
	}
	e.want[BaseName(d.Key)] = body
	return true
}

func (e *moveEnv) listUIDLs(s *Store, mb Mailbox) []string {
	e.t.Helper()
	ss, err := s.OpenSession(mb, SessionOptions{LockStale: time.Minute})
	if err != nil {
		e.t.Fatalf("session on %s: %v", mb.Path, err)
	}
	defer ss.Close()
	var out []string
	for _, en := range ss.Entries() {
		out = append(out, en.UIDL)
	}
	return out
}

// checkHolds asserts that dir holds every wanted message exactly once
// (by base name), nothing else, the old messages under their exact names.
func (e *moveEnv) checkHolds(dir string) {
	t := e.t
	t.Helper()
	got := map[string]string{}
	for _, sub := range []string{"new", "cur"} {
		for _, n := range listDir(t, filepath.Join(dir, sub)) {
			b := BaseName(n)
			if _, dup := got[b]; dup {
				t.Errorf("%s: message %s twice", dir, b)
			}
			got[b] = sub + "/" + n
			data, err := os.ReadFile(filepath.Join(dir, sub, n))
			if err != nil {
				t.Fatal(err)
			}
			if want, ok := e.want[b]; !ok {
				t.Errorf("%s: unexpected message %s (resurrected or never acknowledged)", dir, n)
			} else if string(data) != want {
				t.Errorf("%s: %s has other content", dir, n)
			}
		}
	}
	for b := range e.want {
		if _, ok := got[b]; !ok {
			t.Errorf("%s: message %s lost", dir, b)
		}
	}
	for b, rel := range e.names {
		if got[b] != rel && got[b] != "" {
			t.Errorf("%s: %s is now %s (name changed)", dir, rel, got[b])
		}
	}
}

// checkMoved asserts the end state of a finished move.
func (e *moveEnv) checkMoved() {
	t := e.t
	t.Helper()
	e.checkHolds(e.dstMb.Path)
	if left := listDir(t, e.srcMb.Path); len(left) != 1 || left[0] != LockName {
		t.Errorf("source holds %v, want the tombstone alone", left)
	}
	if target, err := os.Readlink(filepath.Join(e.srcMb.Path, LockName)); err != nil || target != "moved:"+moveVolume {
		t.Errorf("tombstone %q, %v", target, err)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(e.dstMb.Path), ".Maildir"+moveStagingSuffix)); !os.IsNotExist(err) {
		t.Errorf("staging copy left: %v", err)
	}
	for name, want := range map[string]string{
		"dovecot-uidlist": "3 V1 N5\n1 x\n", "nfsdrop-uidls.dovecot": snapshotMagic + " dovecot 3\n.\n",
		"courierpop3dsizelist": "/2\n", "dovecot-keywords": "0 $Junk\n",
	} {
		if got, err := os.ReadFile(filepath.Join(e.dstMb.Path, name)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	var bytes int64
	n := len(e.want)
	for _, body := range e.want {
		bytes += int64(len(body))
	}
	for rel, data := range e.folder {
		if got, err := os.ReadFile(filepath.Join(e.dstMb.Path, rel)); err != nil || string(got) != data {
			t.Errorf("folder file %s: %q, %v", rel, got, err)
		}
		if strings.Contains(rel, "/cur/") || strings.Contains(rel, "/new/") {
			bytes += int64(len(data))
			n++
		}
	}
	if got, _ := os.ReadFile(filepath.Join(e.dstMb.Path, maildirsizeName)); string(got) != fmt.Sprintf("1000000S,100C\n%d %d\n", bytes, n) {
		t.Errorf("maildirsize %q, want a recount of %d messages, %d bytes", got, n, bytes)
	}
	if uidls := e.listUIDLs(e.b, e.dstMb); !prefixOf(e.uidls, uidls) {
		t.Errorf("UIDLs changed: before %v, after %v", e.uidls, uidls)
	}
	e.checkFollows(moveVolume)
}

// prefixOf reports whether every UIDL of old is in now (new messages may
// have come).
func prefixOf(old, now []string) bool {
	seen := map[string]bool{}
	for _, u := range now {
		seen[u] = true
	}
	for _, u := range old {
		if !seen[u] {
			return false
		}
	}
	return true
}

// checkFollows asserts that a delivery and a login at the old place get
// *MovedError naming vol, from another machine too.
func (e *moveEnv) checkFollows(vol string) {
	t := e.t
	t.Helper()
	for _, s := range []*Store{e.a, e.a2} {
		var moved *MovedError
		_, err := s.Deliver(e.srcMb, strings.NewReader("Subject: late\n\nx\n"))
		if !errors.As(err, &moved) || moved.Volume != vol || failure.KindOf(err) != failure.Temporary {
			t.Errorf("delivery to the old place: %v, want *MovedError{%s}", err, vol)
		}
		_, err = s.OpenSession(e.srcMb, sessOpts)
		if !errors.As(err, &moved) || moved.Volume != vol {
			t.Errorf("login at the old place: %v, want *MovedError{%s}", err, vol)
		}
		// Several recipients: staged in the spool, refused at publication.
		bob := mailbox(s.Root(), "bob")
		st, err := s.StageFor([]Mailbox{e.srcMb, bob}, strings.NewReader("x\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Deliver(e.srcMb); !errors.As(err, &moved) {
			t.Errorf("spooled delivery to the old place: %v, want *MovedError", err)
		}
		if _, err := st.Deliver(bob); err != nil {
			t.Errorf("the other recipient: %v", err)
		}
		st.Discard()
	}
	if left := listDir(t, e.srcMb.Path); len(left) != 1 {
		t.Errorf("the old place came back to life: %v", left)
	}
}

func (e *moveEnv) move(o MoveOptions) (MoveReport, error) {
	if o.DrainWait == 0 {
		o.DrainWait = time.Millisecond
	}
	if o.Poll == 0 {
		o.Poll = time.Millisecond
	}
	return Move(context.Background(), e.a, e.srcMb, e.b, e.dstMb, moveVolume, o)
}

func TestMoveCarriesMailboxAndLeavesTombstone(t *testing.T) {
	e := newMoveEnv(t)
	rep, err := e.move(MoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Messages != 4 || rep.Resumed {
		t.Errorf("report %+v", rep)
	}
	e.checkMoved()
	// Run again: nothing to do.
	if rep, err := e.move(MoveOptions{}); err != nil || !rep.Resumed {
		t.Errorf("second run: %+v, %v", rep, err)
	}
	e.checkMoved()
}

// TestMoveKilledAtEachStep stops a move at every step, as a kill -9
// would (nothing is undone), with a delivery from another machine at that
// point and another one while the move stands still; then the move is
// resumed, or rolled back (where allowed) and made again. Each way there
// is one live mailbox with every acknowledged message once, under the
// same names (UIDLs), and nothing else.
func TestMoveKilledAtEachStep(t *testing.T) {
	steps := []MoveStep{StepCopying, StepCopied, StepLocked, StepTmpRenamed, StepDrained, StepSealing,
		StepSealed, StepFinalCopied, StepVerified, StepPublished, StepMarked, StepCleaning, StepCleaned}
	errKilled := errors.New("killed")
	for _, at := range steps {
		for _, how := range []string{"resume", "rollback"} {
			t.Run(string(at)+"/"+how, func(t *testing.T) {
				e := newMoveEnv(t)
				_, err := e.move(MoveOptions{stepHook: func(st MoveStep) error {
					if st != at {
						return nil
					}
					e.deliver(e.a2)
					return errKilled
				}})
				if !errors.Is(err, errKilled) {
					t.Fatalf("move: %v", err)
				}
				e.deliver(e.a2) // mail goes on while the move stands still
				status, err := InspectMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb)
				if err != nil {
					t.Fatal(err)
				}
				e.checkOneLive(status)
				if how == "rollback" {
					err := RollbackMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb, moveVolume, MoveOptions{})
					if status.State >= MovePublished {
						if err == nil {
							t.Fatalf("rollback at %s succeeded", status.State)
						}
					} else {
						if err != nil {
							t.Fatalf("rollback at %s: %v", status.State, err)
						}
						e.checkRolledBack()
						e.deliver(e.a2)
					}
				}
				if _, err := e.move(MoveOptions{}); err != nil {
					t.Fatalf("resume from %s: %v", status.State, err)
				}
				e.checkMoved()
			})
		}
	}
}

// checkOneLive asserts that exactly one of the old and new places takes
// mail and logins while a move stands still.
func (e *moveEnv) checkOneLive(status MoveStatus) {
	t := e.t
	t.Helper()
	_, dstErr := os.Lstat(e.dstMb.Path)
	dstLive := dstErr == nil
	_, srcErr := os.Lstat(filepath.Join(e.srcMb.Path, "new"))
	srcHasNew := srcErr == nil
	switch {
	case status.State <= MoveCopying:
		if dstLive || !srcHasNew {
			t.Errorf("%s: destination live %v, source has new/ %v", status.State, dstLive, srcHasNew)
		}
		if ss, err := e.a2.OpenSession(e.srcMb, sessOpts); err != nil {
			t.Errorf("%s: login at the source: %v", status.State, err)
		} else {
			ss.Close()
		}
	case status.State == MoveSwitching:
		if dstLive {
			t.Errorf("switching: destination live")
		}
		_, err := e.a2.OpenSession(e.srcMb, sessOpts)
		if failure.KindOf(err) != failure.InUse {
			t.Errorf("switching: login got %v, want InUse", err)
		}
	default:
		if !dstLive || srcHasNew {
			t.Errorf("%s: destination live %v, source has new/ %v", status.State, dstLive, srcHasNew)
		}
	}
}

func (e *moveEnv) checkRolledBack() {
	t := e.t
	t.Helper()
	e.checkHolds(e.srcMb.Path)
	if _, err := os.Lstat(e.dstMb.Path); !os.IsNotExist(err) {
		t.Errorf("destination after rollback: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(e.dstMb.Path), ".Maildir"+moveStagingSuffix)); !os.IsNotExist(err) {
		t.Errorf("staging copy after rollback: %v", err)
	}
	for _, n := range []string{LockName, moveTmpName, moveHoldName, moveLockDraft} {
		if _, err := os.Lstat(filepath.Join(e.srcMb.Path, n)); !os.IsNotExist(err) {
			t.Errorf("%s left after rollback: %v", n, err)
		}
	}
	if uidls := e.listUIDLs(e.a2, e.srcMb); !prefixOf(e.uidls, uidls) {
		t.Errorf("UIDLs changed by rollback: before %v, after %v", e.uidls, uidls)
	}
}

// TestMoveWaitsForPOP3Session: a session holding the mailbox makes the
// switch wait; ended, the move goes on. One that does not end in LockWait
// fails the move with InUse, nothing changed but the copy made so far.
func TestMoveWaitsForPOP3Session(t *testing.T) {
	e := newMoveEnv(t)
	ss, err := e.a2.OpenSession(e.srcMb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.move(MoveOptions{LockWait: time.Nanosecond})
	if failure.KindOf(err) != failure.InUse {
		t.Fatalf("move while a session holds the mailbox: %v, want InUse", err)
	}
	if st, _ := InspectMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb); st.State != MoveCopying {
		t.Errorf("state after a refused switch: %s", st.State)
	}
	if err := ss.Commit([]int{0}, nil); err != nil { // the session still works
		t.Fatal(err)
	}
	for b, rel := range e.names {
		if _, err := os.Lstat(filepath.Join(e.srcMb.Path, rel)); os.IsNotExist(err) {
			delete(e.want, b)
			delete(e.names, b)
		}
	}
	e.uidls = e.listUIDLs(e.a2, e.srcMb)
	ss, err = e.a2.OpenSession(e.srcMb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	waited := 0
	_, err = e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepLockWait {
			waited++
			if waited == 1 {
				ss.Close()
			}
		}
		return nil
	}})
	if err != nil || waited == 0 {
		t.Fatalf("move: %v (waited %d)", err, waited)
	}
	e.checkMoved()
}

// TestMoveCatchesDeliveryInFlight: a delivery that opened tmp/ before the
// switch and publishes after tmp/ was renamed away is carried (or, if it
// comes after the seal, fails temporarily and is not stored).
func TestMoveCatchesDeliveryInFlight(t *testing.T) {
	for _, release := range []MoveStep{StepTmpRenamed, StepSealed} {
		t.Run(string(release), func(t *testing.T) {
			e := newMoveEnv(t)
			other := &faultFS{}
			s2, err := New(Options{MailRoot: e.a.Root(), MountMarker: testMarker, Hostname: "mx3.test", FS: other, Chown: e.a2Chown()})
			if err != nil {
				t.Fatal(err)
			}
			atLink, proceed := make(chan struct{}), make(chan struct{})
			other.hook = func(op, path string, real func() error) error {
				if op == "link" || op == "rename" && strings.Contains(path, "/new/") {
					close(atLink)
					<-proceed
					other.mu.Lock()
					other.hook = nil
					other.mu.Unlock()
				}
				return real()
			}
			var derr error
			var acked bool
			done := make(chan struct{})
			go func() {
				defer close(done)
				e.n++
				body := fmt.Sprintf("Subject: inflight\n\nm %d\n", e.n)
				var d Delivery
				if d, derr = s2.Deliver(e.srcMb, strings.NewReader(body)); derr == nil {
					acked = true
					e.want[BaseName(d.Key)] = body
				}
			}()
			<-atLink
			_, err = e.move(MoveOptions{stepHook: func(st MoveStep) error {
				if st == release {
					close(proceed)
					if release == StepTmpRenamed {
						<-done
					}
				}
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			<-done
			if release == StepTmpRenamed && !acked {
				t.Errorf("delivery published before the seal failed: %v", derr)
			}
			if release == StepSealed && (acked || failure.KindOf(derr) != failure.Temporary) {
				t.Errorf("delivery after the seal: acked %v, %v; want a temporary failure", acked, derr)
			}
			e.checkMoved()
		})
	}
}

func (e *moveEnv) a2Chown() *bool { no := false; return &no }

// TestMoveUnderConcurrentDeliveries delivers from another machine all
// through a move: every acknowledged message ends up once in the new
// place, nothing else does.
func TestMoveUnderConcurrentDeliveries(t *testing.T) {
	e := newMoveEnv(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var tempFailures, acks int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			body := fmt.Sprintf("Subject: c%d\n\nconcurrent %d\n", i, i)
			d, err := e.a2.Deliver(e.srcMb, strings.NewReader(body))
			mu.Lock()
			if err == nil {
				acks++
				e.want[BaseName(d.Key)] = body
			} else if failure.KindOf(err) == failure.Temporary {
				tempFailures++
			} else {
				t.Errorf("delivery: %v", err)
			}
			mu.Unlock()
			var moved *MovedError
			if errors.As(err, &moved) {
				return
			}
		}
	}()
	_, err := e.move(MoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(stop)
	t.Logf("%d acknowledged, %d temporary failures", acks, tempFailures)
	e.checkMoved()
}

// TestSweepLeavesMoveAlone: the tmp/ sweepers do not touch a move's
// renamed tmp/ (its files may be deliveries in flight), and a sweep of
// the old place does not bring tmp/ back.
func TestSweepLeavesMoveAlone(t *testing.T) {
	e := newMoveEnv(t)
	var swept int
	_, err := e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepTmpRenamed {
			old := filepath.Join(e.srcMb.Path, moveTmpName, "old-delivery")
			if err := os.WriteFile(old, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			past := time.Now().Add(-2 * TmpMaxAge)
			os.Chtimes(old, past, past)
			n, _ := e.a.SweepTmp(e.srcMb.Path, 0, false)
			m, _, _ := e.a.SweepTree(e.a.Root(), 0, false)
			swept = n + m
			if _, err := os.Lstat(old); err != nil {
				t.Errorf("swept: %v", err)
			}
			os.Remove(old)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if swept != 0 {
		t.Errorf("sweepers removed %d files", swept)
	}
	if _, err := os.Lstat(filepath.Join(e.srcMb.Path, "tmp")); !os.IsNotExist(err) {
		t.Errorf("tmp/ back: %v", err)
	}
}

// TestMoveRefusals: an existing destination and a move to another volume
// under way are refused before anything changes.
func TestMoveRefusals(t *testing.T) {
	e := newMoveEnv(t)
	if _, err := e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepLocked {
			return errors.New("stop")
		}
		return nil
	}}); err == nil {
		t.Fatal("not stopped")
	}
	if _, err := Move(context.Background(), e.a, e.srcMb, e.b, e.dstMb, "vol3", MoveOptions{}); failure.KindOf(err) != failure.Permanent {
		t.Errorf("another volume: %v", err)
	}
	if err := RollbackMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb, moveVolume, MoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.dstMb.Path, "new"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := e.move(MoveOptions{}); failure.KindOf(err) != failure.Permanent {
		t.Errorf("existing destination: %v", err)
	}
	e.checkHolds(e.srcMb.Path)
}

// TestMoveFaultAtEachCall fails the move's Nth filesystem call, on either
// volume, for every N a move makes: once without making the call, once
// making it and losing the reply (NFS). The move stops with an error (or,
// for a lost reply it can verify, goes on); resumed without faults, or
// rolled back where that is allowed and moved again, the mailbox ends up
// moved whole, once.
func TestMoveFaultAtEachCall(t *testing.T) {
	ops := func() []string {
		e := newMoveEnv(t)
		ops := []string{""}
		count := func(op, path string, real func() error) error { ops = append(ops, op); return real() }
		e.fa.hook, e.fb.hook = count, count
		if _, err := e.move(MoveOptions{}); err != nil {
			t.Fatal(err)
		}
		return ops
	}()
	total := len(ops) - 1
	t.Logf("a move makes %d filesystem calls", total)
	mutating := map[string]bool{"rename": true, "link": true, "symlink": true, "unlink": true, "mkdir": true, "open": true}
	for n := 1; n <= total; n++ {
		if testing.Short() && n%5 != 0 {
			continue // -short: every fifth call
		}
		for _, lost := range []bool{false, true} {
			name := fmt.Sprintf("call%d-%s", n, ops[n])
			if lost {
				if !mutating[ops[n]] {
					continue // a read whose reply is lost is a read that failed
				}
				name += "-lost-reply"
			}
			t.Run(name, func(t *testing.T) {
				e := newMoveEnv(t)
				var mu sync.Mutex
				calls, failed := 0, ""
				hook := func(op, path string, real func() error) error {
					mu.Lock()
					calls++
					hit := calls == n
					if hit {
						failed = op + " " + path
					}
					mu.Unlock()
					if !hit {
						return real()
					}
					if lost {
						real()
					}
					return syscall.EIO
				}
				e.fa.hook, e.fb.hook = hook, hook
				_, err := e.move(MoveOptions{})
				e.fa.hook, e.fb.hook = nil, nil
				status, serr := InspectMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb)
				if serr != nil {
					t.Fatal(serr)
				}
				if err != nil {
					e.checkOneLive(status)
					t.Logf("failed %q: %v", failed, err)
					if n%2 == 0 && status.State < MovePublished {
						if rerr := RollbackMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb, moveVolume, MoveOptions{}); rerr != nil {
							t.Fatalf("rollback after %q failed: %v", failed, rerr)
						}
						e.checkRolledBack()
					}
					if _, err := e.move(MoveOptions{}); err != nil {
						t.Fatalf("resume after %q failed: %v", failed, err)
					}
				} else if strings.Contains(failed, moveRunningName) {
					// The run's own lock could not be released at the
					// end: harmless beside the tombstone, and stale in a
					// minute. Let it expire.
					os.Remove(filepath.Join(e.srcMb.Path, moveRunningName))
				}
				e.checkMoved()
			})
		}
	}
}

// sealRace is a delivery on a second machine of the source volume that
// races a move: it published into new/ just before the seal and fsyncs
// new/ after the seal removed it.
type sealRace struct {
	now func() time.Time // the second machine's clock (nil: time.Now)
	// afterSeal runs in the delivery's fsync of new/ once the move sealed
	// new/, before that fsync goes on (nil: nothing).
	afterSeal func()
	// deliver delivers into e.srcMb on the second machine.
	deliver func(s *Store) (Delivery, error)
}

// deliverAcrossSeal runs r.deliver on a second machine (mx3.test) and holds
// its fsync of new/ until a move of the mailbox has sealed new/. The fsync
// then finds new/ gone and fails with ESTALE, as an NFS client does for a
// removed directory. It returns the delivery's answer once the move is
// done; the move itself must succeed.
func (e *moveEnv) deliverAcrossSeal(r sealRace) (Delivery, error) {
	e.t.Helper()
	other := &faultFS{}
	s2, err := New(Options{MailRoot: e.a.Root(), MountMarker: testMarker, Hostname: "mx3.test", FS: other, Chown: e.a2Chown(), Now: r.now})
	if err != nil {
		e.t.Fatal(err)
	}
	atSync, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	other.hook = func(op, path string, real func() error) error {
		if op != "syncdir" || !strings.Contains(path, "/new") {
			return real()
		}
		once.Do(func() {
			close(atSync)
			<-proceed
			if r.afterSeal != nil {
				r.afterSeal()
			}
		})
		if _, err := os.Stat(path); os.IsNotExist(err) {
			return syscall.ESTALE // what an NFS client says of a removed directory
		}
		return real()
	}
	var d Delivery
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		d, derr = r.deliver(s2)
	}()
	<-atSync
	_, err = e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepSealed {
			close(proceed)
			<-done
		}
		return nil
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	return d, derr
}

// TestMoveDeliveryBetweenPublishAndFsync: a delivery that published into
// new/ just before the seal and fsyncs new/ after the seal removed it
// (over NFS: ESTALE) must not be answered "temporary failure": the move
// has its message, and Postfix would deliver it a second time.
func TestMoveDeliveryBetweenPublishAndFsync(t *testing.T) {
	e := newMoveEnv(t)
	body := "Subject: racing\n\nfsync after the seal\n"
	d, err := e.deliverAcrossSeal(sealRace{deliver: func(s *Store) (Delivery, error) {
		return s.Deliver(e.srcMb, strings.NewReader(body))
	}})
	if err != nil {
		t.Fatalf("delivery whose message the move carried: %v", err)
	}
	e.want[BaseName(d.Key)] = body
	e.checkMoved()
}

// TestTombstoneNeverTakenOver: a tombstone older than any lock_stale is
// followed, never taken over as a dead session's lock, and a Maildir
// without tmp/ whose lock is a tombstone is not repaired.
func TestTombstoneNeverTakenOver(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "old")
	deliverN(t, s, mb, 1)
	lock := filepath.Join(mb.Path, LockName)
	past := time.Now().Add(-24 * time.Hour)
	ts := []unix.Timespec{unix.NsecToTimespec(past.UnixNano()), unix.NsecToTimespec(past.UnixNano())}
	for _, c := range []struct {
		target string
		kind   failure.Kind
		moved  bool
	}{{"moving:vol2", failure.InUse, false}, {"moved:vol2", failure.Temporary, true}} {
		os.Remove(lock)
		if err := os.Symlink(c.target, lock); err != nil {
			t.Fatal(err)
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, lock, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		var moved *MovedError
		ss, err := s.OpenSession(mb, SessionOptions{LockStale: MinLockStale})
		if err == nil {
			ss.Close()
			t.Errorf("login at %s took the tombstone over", c.target)
			continue
		}
		if failure.KindOf(err) != c.kind || errors.As(err, &moved) != c.moved {
			t.Errorf("login at %s: %v", c.target, err)
		}
		if got, _ := os.Readlink(lock); got != c.target {
			t.Errorf("tombstone %s taken over: now %q", c.target, got)
		}
	}
	if err := os.RemoveAll(filepath.Join(mb.Path, "tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("moving:vol2", lock); err != nil {
		t.Fatal(err)
	}
	_, err := s.Deliver(mb, strings.NewReader("x\n"))
	if failure.KindOf(err) != failure.Temporary || !errors.Is(err, errBeingMoved) {
		t.Errorf("delivery while moving: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(mb.Path, "tmp")); !os.IsNotExist(err) {
		t.Errorf("a Maildir being moved was repaired: %v", err)
	}
}

// TestMoveOneRunAtATime: a second run (or a rollback) while a move runs
// is refused with InUse; the lock of a run killed with kill -9 is taken
// over once stale.
func TestMoveOneRunAtATime(t *testing.T) {
	e := newMoveEnv(t)
	var second, rollback error
	_, err := e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepSealed {
			_, second = e.move(MoveOptions{})
			rollback = RollbackMove(context.Background(), e.a, e.srcMb, e.b, e.dstMb, moveVolume, MoveOptions{})
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if failure.KindOf(second) != failure.InUse || failure.KindOf(rollback) != failure.InUse {
		t.Errorf("second run: %v; rollback: %v; want InUse", second, rollback)
	}
	e.checkMoved()

	// A run killed with kill -9 left its lock a day ago.
	e2 := newMoveEnv(t)
	left := filepath.Join(e2.srcMb.Path, moveRunningName)
	if err := os.Symlink("DEADTOKEN maildir-move mx9 pid 1", left); err != nil {
		t.Fatal(err)
	}
	past := unix.NsecToTimespec(time.Now().Add(-24 * time.Hour).UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, left, []unix.Timespec{past, past}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.move(MoveOptions{}); err != nil {
		t.Fatalf("move after a killed run: %v", err)
	}
	e2.checkMoved()
}

// TestMoveCarriesFolders: Maildir++ folders (an IMAP server's) are copied
// whole, verified, counted in maildirsize, and removed from the old place
// (checkMoved checks each; every move test has one folder, this one two).
func TestMoveCarriesFolders(t *testing.T) {
	e := newMoveEnv(t)
	e.addFolder(".Trash", map[string]string{
		"cur/1700000000.M1P1.old,S=6:2,ST": "trash\n",
		"maildirfolder":                    "",
		"dovecot-uidlist":                  "3 V2 N2\n",
	})
	if _, err := e.move(MoveOptions{}); err != nil {
		t.Fatal(err)
	}
	e.checkMoved()
}

// TestMoveCleanupLeavesLateMail: mail that a machine without tombstone
// support put into the old place after the switch is reported, never
// removed by the cleanup.
func TestMoveCleanupLeavesLateMail(t *testing.T) {
	e := newMoveEnv(t)
	_, err := e.move(MoveOptions{stepHook: func(st MoveStep) error {
		if st == StepMarked {
			return errors.New("killed")
		}
		return nil
	}})
	if err == nil {
		t.Fatal("not stopped")
	}
	late := filepath.Join(e.srcMb.Path, "new", "1700000000.M1P1.oldbinary")
	if err := os.MkdirAll(filepath.Dir(late), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(late, []byte("late\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.move(MoveOptions{}); failure.KindOf(err) != failure.Temporary {
		t.Errorf("cleanup with late mail: %v, want a temporary failure", err)
	}
	if _, err := os.Stat(late); err != nil {
		t.Errorf("late mail removed: %v", err)
	}
}

// TestMoveLateDeliveryCarriedIsAcknowledged: a delivery that is past its
// commit deadline after the fsync of new/ is normally taken back out of
// new/ and answered 4xx (Postfix's retry is the only copy). When a move
// sealed new/ in between, the message is no longer there to take back:
// the move carried it, so a 4xx would make Postfix's retry a duplicate.
// The recipient is acknowledged instead.
func TestMoveLateDeliveryCarriedIsAcknowledged(t *testing.T) {
	e := newMoveEnv(t)
	clock := testkit.NewClock(time.Now())
	body := "Subject: late\n\ncarried by the move\n"
	d, err := e.deliverAcrossSeal(sealRace{
		now:       clock.Now,
		afterSeal: func() { clock.Advance(time.Hour) }, // the filer "hung" past the deadline
		deliver: func(s *Store) (Delivery, error) {
			st, err := s.Stage(e.srcMb, strings.NewReader(body))
			if err != nil {
				return Delivery{}, err
			}
			defer st.Discard()
			st.SetDeadline(clock.Now().Add(5 * time.Minute))
			return st.Deliver(e.srcMb)
		},
	})
	if err != nil {
		t.Fatalf("late delivery whose message the move carried: %v (Postfix would send it again)", err)
	}
	e.want[BaseName(d.Key)] = body
	e.checkMoved()
}
