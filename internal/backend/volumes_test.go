package backend

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// volWorld is two volumes, v1 and v2, in two directories below a mail
// root, users named on each (a*, on v1; b*, on v2) and placed (p*), and
// an LMTP server over them. v2's health is down while v2down is set.
type volWorld struct {
	t      *testing.T
	root   string
	set    *volume.Set
	users  memUsers
	addr   string
	v2down atomic.Bool
	log    *testkit.LogBuffer
	fs1    *faultFS // v1's file system, for fault hooks
}

func newVolWorld(t *testing.T, opts ...Options) *volWorld {
	t.Helper()
	w := &volWorld{t: t, root: t.TempDir(), users: memUsers{}, log: &testkit.LogBuffer{}, fs1: &faultFS{}}
	o := volume.Options{MailRoot: w.root}
	for _, name := range []string{"v1", "v2"} {
		p := filepath.Join(w.root, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, ".mounted"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		vo := volume.VolumeOptions{Name: name, Path: p, MountMarker: ".mounted", NewMailboxes: true,
			StoreOptions: store.Options{Hostname: "mx.test"}}
		if len(opts) > 0 && opts[0].Now != nil {
			// The commit deadline is checked on the store's clock: v1's
			// follows the test's clock, v2's stays at its start (v2's
			// filer answers at once while v1's "hangs").
			vo.StoreOptions.Now = opts[0].Now
			if name == "v2" {
				start := opts[0].Now()
				vo.StoreOptions.Now = func() time.Time { return start }
			}
		}
		if name == "v1" {
			vo.FS = w.fs1
		}
		if name == "v2" {
			vo.Err = func() error {
				if w.v2down.Load() {
					return failure.Temp("probe", "volume v2 unavailable", nil)
				}
				return nil
			}
		}
		o.Volumes = append(o.Volumes, vo)
	}
	set, err := volume.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	w.set = set
	for _, l := range []string{"a1", "a2", "b1", "b2", "p1", "p2", "p3"} {
		u := &userdb.User{Name: l, Address: l + "@" + testDomain, UID: -1, GID: -1, Enabled: true}
		switch l[0] {
		case 'a':
			u.Volume, u.Mailbox = "v1", filepath.Join(w.root, "v1", testDomain, l, "Maildir")
		case 'b':
			u.Volume, u.Mailbox = "v2", filepath.Join(w.root, "v2", testDomain, l, "Maildir")
		default:
			u.Mailbox = filepath.Join(w.root, testDomain, l, "Maildir")
		}
		w.users[l] = u
	}
	log := slog.New(slog.NewTextHandler(w.log, nil))
	bo := Options{}
	if len(opts) > 0 {
		bo = opts[0]
	}
	bo.Logger = log
	b := New(&Sources{Users: w.users, Volumes: set, Hostname: "mx.test"}, bo)
	srv := lmtp.New(b, lmtp.Options{Hostname: "mx.test", MaxMessageSize: 10 << 20, MaxRecipients: 50,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, Logger: log})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	w.addr = l.Addr().String()
	return w
}

// send runs one transaction; it returns each recipient's RCPT reply and,
// for those accepted, its reply after DATA.
func (w *volWorld) send(msg string, rcpts ...string) (rcpt, data map[string]string) {
	w.t.Helper()
	c := testkit.Dial(w.t, "tcp", w.addr)
	defer c.Close()
	c.ExpectReply("220 ")
	c.Send("LHLO client.test")
	c.ExpectReply("250 ")
	c.Send("MAIL FROM:<sender@example.net>")
	c.ExpectReply("250 ")
	rcpt, data = map[string]string{}, map[string]string{}
	var accepted []string
	for _, r := range rcpts {
		c.Send("RCPT TO:<" + r + ">")
		rcpt[r] = c.Reply()
		if strings.HasPrefix(rcpt[r], "250") {
			accepted = append(accepted, r)
		}
	}
	if len(accepted) > 0 {
		c.Send("DATA")
		c.ExpectReply("354 ")
		c.Raw(dotStuffed(msg) + ".\r\n")
		for _, r := range accepted {
			data[r] = c.Reply()
		}
	}
	c.Send("QUIT")
	c.ExpectReply("221 ")
	return rcpt, data
}

// mailbox is where user local's Maildir is: named, or found by Locate.
func (w *volWorld) mailbox(local string) string {
	w.t.Helper()
	_, mb, err := w.set.Locate(w.t.Context(), w.users[local])
	if err != nil {
		w.t.Fatal(err)
	}
	return mb.Path
}

// messages counts complete messages in local's new/ and checks tmp/ empty.
func (w *volWorld) messages(local string) int {
	w.t.Helper()
	md := w.mailbox(local)
	news, _ := os.ReadDir(filepath.Join(md, "new"))
	tmps, _ := os.ReadDir(filepath.Join(md, "tmp"))
	if len(tmps) != 0 {
		w.t.Errorf("%s: tmp/ not empty: %d files", local, len(tmps))
	}
	for _, e := range news {
		data, err := os.ReadFile(filepath.Join(md, "new", e.Name()))
		if err != nil || !bytes.HasSuffix(data, []byte("body line\r\n")) {
			w.t.Errorf("%s: %s is not the complete message (%v)", local, e.Name(), err)
		}
	}
	return len(news)
}

// TestVolumesOneMessageManyVolumes: one message to recipients on both
// volumes (named and placed) is stored once in each Maildir, on the right
// volume, and nothing is left in the volumes' spools.
func TestVolumesOneMessageManyVolumes(t *testing.T) {
	w := newVolWorld(t)
	all := []string{"a1@example.org", "b1@example.org", "a2@example.org", "b2@example.org", "p1@example.org", "p2@example.org", "p3@example.org"}
	_, data := w.send(testMsg, all...)
	for _, r := range all {
		if !strings.HasPrefix(data[r], "250 ") {
			t.Errorf("%s: %q, want 250", r, data[r])
		}
	}
	for _, l := range []string{"a1", "a2", "b1", "b2", "p1", "p2", "p3"} {
		if n := w.messages(l); n != 1 {
			t.Errorf("%s: %d messages, want 1", l, n)
		}
	}
	for _, l := range []string{"a1", "b1"} {
		if want := filepath.Join(w.root, w.users[l].Volume); !strings.HasPrefix(w.mailbox(l), want+"/") {
			t.Errorf("%s: Maildir %s not on volume %s", l, w.mailbox(l), want)
		}
	}
	for _, v := range []string{"v1", "v2"} {
		entries, _ := os.ReadDir(filepath.Join(w.root, v, ".nfsdrop-spool", "tmp"))
		if len(entries) != 0 {
			t.Errorf("volume %s: spool tmp/ holds %d files", v, len(entries))
		}
	}
	// A second message finds the placed Maildirs where the first made them.
	w.send(testMsg, "p1@example.org", "p2@example.org", "p3@example.org")
	for _, l := range []string{"p1", "p2", "p3"} {
		if n := w.messages(l); n != 2 {
			t.Errorf("%s: %d messages after the second, want 2", l, n)
		}
	}
}

// TestVolumeDownAnswersOnlyItsUsers: with v2 down, its users get 451
// 4.3.0 at RCPT (the volume in the log, no path in the reply) and the
// users of v1 are delivered; back up, v2's users are delivered too.
func TestVolumeDownAnswersOnlyItsUsers(t *testing.T) {
	w := newVolWorld(t)
	w.v2down.Store(true)
	rcpts := []string{"b1@example.org", "a1@example.org", "b2@example.org", "a2@example.org"}
	rcpt, data := w.send(testMsg, rcpts...)
	for _, r := range rcpts {
		switch {
		case r[0] == 'b' && !strings.HasPrefix(rcpt[r], "451 4.3.0"):
			t.Errorf("%s on the down volume: RCPT %q, want 451 4.3.0", r, rcpt[r])
		case r[0] == 'b' && strings.Contains(rcpt[r], w.root):
			t.Errorf("%s: reply %q shows a path", r, rcpt[r])
		case r[0] == 'a' && !strings.HasPrefix(data[r], "250 "):
			t.Errorf("%s on the other volume: %q / %q, want 250", r, rcpt[r], data[r])
		}
	}
	if l := w.log.String(); !strings.Contains(l, "volume=v2") {
		t.Errorf("log does not name the down volume:\n%s", l)
	}
	if w.messages("a1") != 1 || w.messages("a2") != 1 {
		t.Error("v1's users not delivered while v2 was down")
	}
	w.v2down.Store(false)
	_, data = w.send(testMsg, "b1@example.org", "b2@example.org")
	if !strings.HasPrefix(data["b1@example.org"], "250 ") || w.messages("b1") != 1 {
		t.Errorf("v2 back up: %q", data["b1@example.org"])
	}
}

// TestVolumeBrokenMaildirAnswersOnlyItself: a Maildir that cannot be
// written on one volume (its tmp/ is a file) fails only its recipient; the
// other recipient on the same volume and those on the other volume get
// their message.
func TestVolumeBrokenMaildirAnswersOnlyItself(t *testing.T) {
	w := newVolWorld(t)
	md := w.mailbox("b1")
	for _, sub := range []string{"new", "cur"} {
		if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(md, "tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rcpts := []string{"b1@example.org", "a1@example.org", "b2@example.org"}
	rcpt, data := w.send(testMsg, rcpts...)
	if r := data["b1@example.org"] + rcpt["b1@example.org"]; strings.Contains(data["b1@example.org"], "250 ") || r == "" {
		t.Errorf("b1 with a broken Maildir: RCPT %q DATA %q, want a refusal", rcpt["b1@example.org"], data["b1@example.org"])
	}
	for _, r := range []string{"a1@example.org", "b2@example.org"} {
		if !strings.HasPrefix(data[r], "250 ") {
			t.Errorf("%s: %q, want 250", r, data[r])
		}
	}
	if w.messages("a1") != 1 || w.messages("b2") != 1 {
		t.Error("the other recipients were not delivered exactly once")
	}
}

// TestVolumesLargeMessageSpooledToFile: a message above the in-memory
// spool limit, to recipients on both volumes, is stored complete in each.
func TestVolumesLargeMessageSpooledToFile(t *testing.T) {
	w := newVolWorld(t)
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", spoolInMemory/1000+10) + "body line\r\n"
	_, data := w.send(big, "a1@example.org", "b1@example.org")
	for r, d := range data {
		if !strings.HasPrefix(d, "250 ") {
			t.Errorf("%s: %q", r, d)
		}
	}
	for _, l := range []string{"a1", "b1"} {
		if w.messages(l) != 1 {
			t.Errorf("%s: not exactly one message", l)
		}
	}
}

// authUsers is memUsers whose password is "pw" for everyone.
type authUsers struct{ memUsers }

func (a authUsers) Authenticate(ctx context.Context, name, password string) (*userdb.User, error) {
	if password != "pw" {
		return nil, failure.New(failure.NotFound, "auth", "no", nil)
	}
	return a.Lookup(ctx, name)
}

// TestVolumeLoginLocates: a POP3 login opens the Maildir on the user's
// volume (named or placed, where delivery put it); with v2 down its users
// get a temporary failure at once, v1's users log in.
func TestVolumeLoginLocates(t *testing.T) {
	w := newVolWorld(t)
	w.send(testMsg, "a1@example.org", "b1@example.org", "p1@example.org")
	b := New(&Sources{Users: authUsers{w.users}, Volumes: w.set, Session: store.SessionOptions{LockStale: time.Minute}}, Options{})
	cl := pop3.Client{Remote: netip.MustParseAddrPort("127.0.0.1:1"), Session: "s"}
	for _, u := range []string{"a1", "b1", "p1"} {
		mb, err := b.Login(t.Context(), cl, u, "pw")
		if err != nil {
			t.Fatalf("%s: login: %v", u, err)
		}
		if mb.Len() != 1 {
			t.Errorf("%s: %d messages, want the one delivered", u, mb.Len())
		}
		mb.Close()
	}
	w.v2down.Store(true)
	if _, err := b.Login(t.Context(), cl, "b1", "pw"); failure.As(err).Kind != failure.Temporary {
		t.Errorf("b1 with v2 down: %v, want a temporary failure", err)
	}
	mb, err := b.Login(t.Context(), cl, "a1", "pw")
	if err != nil {
		t.Fatalf("a1 with v2 down: %v", err)
	}
	mb.Close()
}

// TestVolumeMovedMaildirFollowed: when the store says a Maildir moved to
// another volume (*store.MovedError, here from v1's file system at the
// create in its tmp/ or the link into its new/), the delivery follows it
// once: the message lands on
// the new volume, at the same path, and the other recipient is unaffected.
func TestVolumeMovedMaildirFollowed(t *testing.T) {
	w := newVolWorld(t)
	old := filepath.Join(w.root, "v1", testDomain, "a1", "Maildir") + "/"
	w.fs1.mu.Lock()
	w.fs1.hook = func(op, path string) (error, bool) {
		if (op == "open" || op == "link") && strings.HasPrefix(path, old) {
			return &store.MovedError{Volume: "v2"}, false
		}
		return nil, false
	}
	w.fs1.mu.Unlock()
	_, data := w.send(testMsg, "a1@example.org", "a2@example.org")
	_, single := w.send(testMsg, "a1@example.org")
	data["a1 alone"] = single["a1@example.org"]
	for r, d := range data {
		if !strings.HasPrefix(d, "250 ") {
			t.Errorf("%s: %q, want 250", r, d)
		}
	}
	moved := filepath.Join(w.root, "v2", testDomain, "a1", "Maildir", "new")
	if ents, _ := os.ReadDir(moved); len(ents) != 2 {
		t.Errorf("a1's message not on the volume its Maildir moved to: %d files in %s", len(ents), moved)
	}
	if ents, _ := os.ReadDir(filepath.Join(w.root, "v1", testDomain, "a1", "Maildir", "new")); len(ents) != 0 {
		t.Errorf("a1's old Maildir got %d messages", len(ents))
	}
	if w.messages("a2") != 1 {
		t.Error("a2 not delivered exactly once")
	}
}

// TestVolumesCommitDeadline: with recipients on two volumes, a publish
// that comes after lmtp.commit_deadline (the filer of v1 "hung" for the
// whole deadline at a1's rename into new/) is withdrawn and answered 4xx,
// while b1 on the other volume is acknowledged: acknowledged <=> in new/.
func TestVolumesCommitDeadline(t *testing.T) {
	const deadline = 5 * time.Minute
	clock := testkit.NewClock(time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC))
	w := newVolWorld(t, Options{Now: clock.Now, CommitDeadline: deadline})
	var hung atomic.Bool
	w.fs1.mu.Lock()
	w.fs1.hook = func(op, path string) (error, bool) {
		if op == "rename" && strings.Contains(path, "/a1/Maildir/new/") && hung.CompareAndSwap(false, true) {
			clock.Advance(deadline)
		}
		return nil, false
	}
	w.fs1.mu.Unlock()
	_, data := w.send(testMsg, "a1@example.org", "b1@example.org")
	if !hung.Load() {
		t.Fatal("no rename into a1's new/: the test does not test what it says")
	}
	if rep, n := data["a1@example.org"], w.messages("a1"); !strings.HasPrefix(rep, "4") || n != 0 {
		t.Errorf("a1: %q with %d messages, want 4xx and none", rep, n)
	}
	if rep, n := data["b1@example.org"], w.messages("b1"); !strings.HasPrefix(rep, "250 ") || n != 1 {
		t.Errorf("b1: %q with %d messages, want 250 and one", rep, n)
	}
}
