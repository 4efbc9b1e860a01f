package backend

// Tests of the whole delivery path behind the LMTP server: a real
// lmtp.Server on loopback, this package's Backend, a real store over the
// test's temporary directory (through a fault-injecting store.FS), a user
// database in memory, and for scanning a stand-in clamd on loopback.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/scan"
	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

const testDomain = "example.org"

// memUsers is a user database in memory: local part (detail after '+'
// removed) to user.
type memUsers map[string]*userdb.User

func (m memUsers) Lookup(_ context.Context, address string) (*userdb.User, error) {
	local, _, _ := strings.Cut(strings.ToLower(address), "@")
	local, _, _ = strings.Cut(local, "+")
	u, ok := m[local]
	if !ok {
		return nil, failure.New(failure.NotFound, "lookup", "no such user", nil)
	}
	c := *u
	return &c, nil
}

func (m memUsers) Authenticate(context.Context, string, string) (*userdb.User, error) {
	return nil, failure.New(failure.NotFound, "auth", "no", nil)
}

func (memUsers) Close() error { return nil }

// faultFS is the real filesystem with a hook before every call: a non-nil
// error from hook is returned instead (after the real call when after is
// true, as NFS reports write errors at close).
type faultFS struct {
	store.OSFS
	mu   sync.Mutex
	hook func(op, path string) (err error, after bool)
}

func (f *faultFS) do(op, path string, real func() error) error {
	f.mu.Lock()
	h := f.hook
	f.mu.Unlock()
	if h != nil {
		// The store names files through its held directories
		// (/proc/self/fd/N/...): hooks match on the paths they stand for.
		if err, after := h(op, store.ResolvedPath(path)); err != nil {
			if after {
				real()
			}
			return err
		}
	}
	return real()
}

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (store.File, error) {
	var file store.File
	err := f.do("open", name, func() error {
		var err error
		file, err = f.OSFS.OpenFile(name, flag, perm)
		return err
	})
	if err != nil {
		if file != nil {
			file.Close()
		}
		return nil, err
	}
	return &faultFile{File: file, fs: f, path: name}, nil
}

// CreateAs (a root delivery creating a file as the mailbox's owner) is
// "open" to hooks, like OpenFile.
func (f *faultFS) CreateAs(name string, flag int, perm fs.FileMode, uid, gid int) (store.File, error) {
	var file store.File
	err := f.do("open", name, func() error {
		var err error
		file, err = f.OSFS.CreateAs(name, flag, perm, uid, gid)
		return err
	})
	if err != nil {
		if file != nil {
			file.Close()
		}
		return nil, err
	}
	return &faultFile{File: file, fs: f, path: name}, nil
}

func (f *faultFS) Link(o, n string) error {
	return f.do("link", n, func() error { return f.OSFS.Link(o, n) })
}

func (f *faultFS) Rename(o, n string) error {
	return f.do("rename", n, func() error { return f.OSFS.Rename(o, n) })
}

func (f *faultFS) SyncDir(n string) error {
	return f.do("syncdir", n, func() error { return f.OSFS.SyncDir(n) })
}

type faultFile struct {
	store.File
	fs   *faultFS
	path string
}

func (f *faultFile) Write(p []byte) (int, error) {
	n := 0
	err := f.fs.do("write", f.path, func() error {
		var err error
		n, err = f.File.Write(p)
		return err
	})
	return n, err
}

func (f *faultFile) Sync() error  { return f.fs.do("fsync", f.path, f.File.Sync) }
func (f *faultFile) Close() error { return f.fs.do("close", f.path, f.File.Close) }
func (f *faultFile) Chown(uid, gid int) error {
	return f.fs.do("chown", f.path, func() error { return f.File.Chown(uid, gid) })
}

// world is a mail root, its store and users, and an LMTP server over them.
type world struct {
	t       *testing.T
	root    string
	fs      *faultFS
	users   memUsers
	store   *store.Store
	backend *Backend
	addr    string
	srv     *lmtp.Server
}

type worldOpts struct {
	chown bool              // run chowns (needs root)
	uids  map[string]int    // per-user uid and gid (default -1)
	scan  *ScanPolicy       // scanning, when not nil
	alias map[string]string // extra local part -> the same Maildir as another user
	lmtp  lmtp.Options      // LMTP options beyond the defaults
	// now is the clock of the store and the backend (nil: time.Now);
	// commitDeadline the backend's (0: none).
	now            func() time.Time
	commitDeadline time.Duration
}

func newWorld(t *testing.T, o worldOpts, locals ...string) *world {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, ".mounted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, root: root, fs: &faultFS{}, users: memUsers{}}
	for _, l := range locals {
		id := -1
		if v, ok := o.uids[l]; ok {
			id = v
		}
		w.users[l] = &userdb.User{Name: l, Address: l + "@" + testDomain, Mailbox: w.maildir(l), UID: id, GID: id, Enabled: true}
	}
	for alias, target := range o.alias {
		u := *w.users[target]
		u.Address = alias + "@" + testDomain
		w.users[alias] = &u
	}
	chown := o.chown
	s, err := store.New(store.Options{MailRoot: root, MountMarker: ".mounted", Hostname: "mx.test", ESTALERetries: 2, FS: w.fs, Chown: &chown, Now: o.now})
	if err != nil {
		t.Fatal(err)
	}
	w.store = s
	w.backend = New(&Sources{Users: w.users, Volumes: volume.Single(s), Scan: o.scan, Hostname: "mx.test"}, Options{Now: o.now, CommitDeadline: o.commitDeadline})
	lo := o.lmtp
	lo.Hostname, lo.MaxMessageSize, lo.MaxRecipients = "mx.test", 10<<20, 50
	lo.ReadTimeout, lo.WriteTimeout = 10*time.Second, 10*time.Second
	srv := lmtp.New(w.backend, lo)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	w.addr = l.Addr().String()
	w.srv = srv
	return w
}

func (w *world) maildir(local string) string {
	return filepath.Join(w.root, testDomain, local, "Maildir")
}

func (w *world) setHook(h func(op, path string) (error, bool)) {
	w.fs.mu.Lock()
	w.fs.hook = h
	w.fs.mu.Unlock()
}

// send runs one LMTP transaction and returns each recipient's reply line.
func (w *world) send(msg string, rcpts ...string) map[string]string {
	w.t.Helper()
	c := testkit.Dial(w.t, "tcp", w.addr)
	defer c.Close()
	c.ExpectReply("220 ")
	c.Send("LHLO client.test")
	c.ExpectReply("250 ")
	c.Send("MAIL FROM:<sender@example.net>")
	c.ExpectReply("250 ")
	for _, r := range rcpts {
		c.Send("RCPT TO:<" + r + ">")
		c.ExpectReply("250 ")
	}
	c.Send("DATA")
	c.ExpectReply("354 ")
	c.Raw(dotStuffed(msg) + ".\r\n")
	out := make(map[string]string)
	for _, r := range rcpts {
		out[r] = c.Reply()
	}
	// The staged copy is discarded after the last reply: the answer to
	// the next command says that LMTPData has returned.
	c.Send("QUIT")
	c.ExpectReply("221 ")
	return out
}

// dotStuffed is msg as DATA carries it: lines that start with "." get
// another, and the last line ends with CRLF.
func dotStuffed(msg string) string {
	if strings.HasPrefix(msg, ".") {
		msg = "." + msg
	}
	msg = strings.ReplaceAll(msg, "\r\n.", "\r\n..")
	if !strings.HasSuffix(msg, "\r\n") {
		msg += "\r\n"
	}
	return msg
}

// files returns the files in local's Maildir subdirectory sub.
func (w *world) files(local, sub string) []string {
	w.t.Helper()
	entries, err := os.ReadDir(filepath.Join(w.maildir(local), sub))
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		w.t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// onlyMessage asserts that local has exactly one complete message in new/
// and an empty tmp/, and returns its contents.
func (w *world) onlyMessage(local, body string) []byte {
	w.t.Helper()
	names := w.files(local, "new")
	if len(names) != 1 {
		w.t.Fatalf("%s: new/ holds %v, want exactly one message", local, names)
	}
	if tmp := w.files(local, "tmp"); len(tmp) != 0 {
		w.t.Errorf("%s: tmp/ not empty: %v", local, tmp)
	}
	data, err := os.ReadFile(filepath.Join(w.maildir(local), "new", names[0]))
	if err != nil {
		w.t.Fatal(err)
	}
	if !bytes.HasSuffix(data, []byte(body)) {
		w.t.Errorf("%s: stored message does not end with the message sent:\n%s", local, data)
	}
	return data
}

// spoolEmpty asserts that nothing was left in the spool.
func (w *world) spoolEmpty() {
	w.t.Helper()
	entries, _ := os.ReadDir(filepath.Join(w.root, ".nfsdrop-spool", "tmp"))
	if len(entries) != 0 {
		w.t.Errorf("spool tmp/ not empty: %d files", len(entries))
	}
}

const testMsg = "Subject: isolation\r\nFrom: sender@example.net\r\n\r\nbody line\r\n"

// One recipient's unusable Maildir (a plain file where the directory
// should be, or a filesystem fault in its tmp/ or new/) answers for that
// recipient only; the others get 250 and exactly one complete file, even
// when the broken one is the first recipient.
func TestOneBrokenMaildirAnswersOnlyForItself(t *testing.T) {
	type hook = func(op, path string) (error, bool)
	brokenPath := func(sub string) string { return filepath.Join(testDomain, "broken", "Maildir", sub) + "/" }
	on := func(op, sub string, errno syscall.Errno, after bool) func(w *world) hook {
		return func(w *world) hook {
			prefix := filepath.Join(w.root, brokenPath(sub))
			return func(o, path string) (error, bool) {
				if o == op && strings.HasPrefix(path+"/", prefix) {
					return &os.PathError{Op: op, Path: path, Err: errno}, after
				}
				return nil, false
			}
		}
	}
	cases := []struct {
		name      string
		plainFile bool // broken's Maildir path is a plain file
		hook      func(w *world) hook
		// linkCode is broken's answer when it gets a hard link of the
		// staged file (its tmp/ is not used), copyCode when it gets a
		// copy of its own (written in its tmp/).
		linkCode, copyCode string
	}{
		{name: "Maildir is a plain file", plainFile: true, linkCode: "550 5.2.0", copyCode: "550 5.2.0"},
		{name: "ENOTDIR creating in tmp/", hook: on("open", "tmp", syscall.ENOTDIR, false), linkCode: "250", copyCode: "550 5.2.0"},
		{name: "EDQUOT at write in tmp/", hook: on("write", "tmp", syscall.EDQUOT, false), linkCode: "250", copyCode: "552 5.2.2"},
		{name: "EDQUOT at close in tmp/", hook: on("close", "tmp", syscall.EDQUOT, true), linkCode: "250", copyCode: "552 5.2.2"},
		{name: "EIO at fsync in tmp/", hook: on("fsync", "tmp", syscall.EIO, false), linkCode: "250", copyCode: "451"},
		{name: "EIO at fsync of new/", hook: on("syncdir", "new", syscall.EIO, false), linkCode: "451", copyCode: "451"},
	}
	differentOwners := map[string]int{"broken": 2001, "alice": 2002, "bob": 2003}
	variants := []struct {
		name  string
		opts  worldOpts
		copy  bool // broken gets a copy of its own
		quota bool // the chown of the spooled file to broken's owner fails (EDQUOT)
	}{
		{name: "same owner"},
		{name: "different owners", opts: worldOpts{chown: true, uids: differentOwners}},
		{name: "different owners, first owner over filer quota", opts: worldOpts{chown: true, uids: differentOwners}, copy: true, quota: true},
	}
	for _, v := range variants {
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				if v.opts.chown {
					testenv.RequireRoot(t)
				}
				w := newWorld(t, v.opts, "broken", "alice", "bob")
				if tc.plainFile {
					os.MkdirAll(filepath.Dir(w.maildir("broken")), 0o711)
					if err := os.WriteFile(w.maildir("broken"), []byte("not a directory"), 0o600); err != nil {
						t.Fatal(err)
					}
				} else if err := w.store.EnsureMaildir(MailboxOf(w.users["broken"])); err != nil {
					t.Fatal(err)
				}
				var h hook
				if tc.hook != nil {
					h = tc.hook(w)
				}
				w.setHook(func(op, path string) (error, bool) {
					if v.quota && op == "chown" && !strings.HasPrefix(path, filepath.Join(w.root, testDomain)+"/") {
						return &os.PathError{Op: op, Path: path, Err: syscall.EDQUOT}, false
					}
					if h != nil {
						return h(op, path)
					}
					return nil, false
				})
				replies := w.send(testMsg, "broken@"+testDomain, "alice@"+testDomain, "bob@"+testDomain)
				w.setHook(nil)
				for _, u := range []string{"alice", "bob"} {
					if rep := replies[u+"@"+testDomain]; !strings.HasPrefix(rep, "250 ") {
						t.Errorf("%s answered %q because of another recipient's Maildir", u, rep)
						continue
					}
					w.onlyMessage(u, "body line\r\n")
				}
				rep := replies["broken@"+testDomain]
				want := tc.linkCode
				if v.copy {
					want = tc.copyCode
				}
				if !strings.HasPrefix(rep, want) {
					t.Errorf("broken answered %q, want %s...", rep, want)
				}
				if !tc.plainFile {
					if strings.HasPrefix(rep, "250 ") {
						w.onlyMessage("broken", "body line\r\n")
					} else if n := w.files("broken", "new"); len(n) != 0 {
						t.Errorf("broken was refused but new/ holds %v", n)
					}
				}
				w.spoolEmpty()
			})
		}
	}
}

// Two recipient addresses with one Maildir (user+a and user+b, or an
// alias) get one file, one quota charge, and the same key; a failure of
// the second's directory fsync cannot take back the file the first was
// answered for, because there is no second link.
func TestSameMaildirTwice(t *testing.T) {
	w := newWorld(t, worldOpts{alias: map[string]string{"carol": "dave"}}, "dave", "erin")
	w.users["dave"].Quota = userdb.Quota{Messages: 10}
	w.users["carol"].Quota = userdb.Quota{Messages: 10}
	syncs := 0
	w.setHook(func(op, path string) (error, bool) {
		// Every fsync of dave's new/ after the first one fails.
		if op == "syncdir" && strings.HasPrefix(path, w.maildir("dave")) {
			if syncs++; syncs > 1 {
				return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}, false
			}
		}
		return nil, false
	})
	replies := w.send(testMsg, "dave+a@"+testDomain, "dave+b@"+testDomain, "carol@"+testDomain, "erin@"+testDomain)
	w.setHook(nil)
	var keys []string
	for _, r := range []string{"dave+a", "dave+b", "carol"} {
		rep := replies[r+"@"+testDomain]
		if !strings.HasPrefix(rep, "250 ") {
			t.Fatalf("%s answered %q", r, rep)
		}
		keys = append(keys, strings.Fields(rep)[3]) // 250 2.0.0 <rcpt> <key> Saved
	}
	if keys[0] != keys[1] || keys[1] != keys[2] {
		t.Errorf("one Maildir, different answers: %q", keys)
	}
	w.onlyMessage("dave", "body line\r\n")
	w.onlyMessage("erin", "body line\r\n")
	u, _, err := w.store.QuotaUsage(MailboxOf(w.users["dave"]))
	if err != nil {
		t.Fatal(err)
	}
	if u.Messages != 1 {
		t.Errorf("maildirsize counts %d messages for one file", u.Messages)
	}
}

// fakeClamd answers every INSTREAM with "stream: OK".
func fakeClamd(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := br.ReadString(0); err != nil { // zINSTREAM\0
					return
				}
				for {
					var n uint32
					if err := binary.Read(br, binary.BigEndian, &n); err != nil {
						return
					}
					if n == 0 {
						break
					}
					if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
						return
					}
				}
				c.Write([]byte("stream: OK\x00"))
			}()
		}
	}()
	return "tcp:" + l.Addr().String()
}

// With scanning on, X-Virus-Status headers that came with the message
// (folded or not, any case) are removed, so that the only one the user
// sees is nfsdrop's — or none, with action "reject" and a clean message.
func TestIncomingVirusStatusRemoved(t *testing.T) {
	forged := "Subject: test\r\n" +
		"X-Virus-Status: Clean (forged 1)\r\n" +
		"From: sender@example.net\r\n" +
		"x-virus-STATUS : Clean\r\n (forged 2,\r\n\tfolded)\r\n" +
		"X-Other: kept\r\n" +
		"\r\n" +
		"X-Virus-Status: in the body, kept\r\n"
	for _, action := range []string{ActionTag, ActionReject} {
		for _, rcpts := range [][]string{{"alice"}, {"alice", "bob"}} {
			t.Run(action+"/"+strings.Join(rcpts, "+"), func(t *testing.T) {
				sc, err := scan.New(scan.Options{Addresses: []string{fakeClamd(t)}, Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				w := newWorld(t, worldOpts{scan: &ScanPolicy{Scanner: sc, Action: action}}, "alice", "bob")
				var addrs []string
				for _, r := range rcpts {
					addrs = append(addrs, r+"@"+testDomain)
				}
				replies := w.send(forged, addrs...)
				for _, r := range rcpts {
					if rep := replies[r+"@"+testDomain]; !strings.HasPrefix(rep, "250 ") {
						t.Fatalf("%s: %q", r, rep)
					}
					data := string(w.onlyMessage(r, "X-Virus-Status: in the body, kept\r\n"))
					header, _, _ := strings.Cut(data, "\r\n\r\n")
					header += "\r\n"
					if strings.Contains(header, "forged") {
						t.Errorf("%s: a forged X-Virus-Status reached the mailbox:\n%s", r, header)
					}
					n := strings.Count(strings.ToLower(header), "x-virus-status")
					if want := map[string]int{ActionTag: 1, ActionReject: 0}[action]; n != want {
						t.Errorf("%s: %d X-Virus-Status headers, want %d:\n%s", r, n, want, header)
					}
					if !strings.Contains(header, "X-Other: kept\r\n") || !strings.Contains(header, "Subject: test\r\n") {
						t.Errorf("%s: other headers lost:\n%s", r, header)
					}
				}
			})
		}
	}
}

// With action "tag", the message with its X-Virus-Status header is staged
// a second time, once for all recipients. When that fails (trouble where
// it is written), each recipient gets a copy of its own instead, and its
// own answer: the failure is not handed to every recipient.
func TestTagRestageFailureFallsBackToCopies(t *testing.T) {
	sc, err := scan.New(scan.Options{Addresses: []string{fakeClamd(t)}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, worldOpts{scan: &ScanPolicy{Scanner: sc, Action: ActionTag}}, "alice", "bob", "carol", "dave")
	// Staging directories exist (as after the first delivery), so that
	// the second file created below is the tagged copy.
	w.send(testMsg, "dave@"+testDomain, "dave@"+testDomain)
	var mu sync.Mutex
	created := map[string]bool{}
	w.setHook(func(op, path string) (error, bool) {
		if op != "open" || filepath.Base(filepath.Dir(path)) != "tmp" {
			return nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		if !created[path] {
			created[path] = true
			if len(created) == 2 { // the tagged copy, written once for all
				return &os.PathError{Op: "open", Path: path, Err: syscall.EIO}, false
			}
		}
		return nil, false
	})
	replies := w.send(testMsg, "alice@"+testDomain, "bob@"+testDomain, "carol@"+testDomain)
	w.setHook(nil)
	for _, u := range []string{"alice", "bob", "carol"} {
		if rep := replies[u+"@"+testDomain]; !strings.HasPrefix(rep, "250 ") {
			t.Errorf("%s: %q", u, rep)
			continue
		}
		data := w.onlyMessage(u, "body line\r\n")
		if !bytes.HasPrefix(data, []byte("X-Virus-Status: Clean\r\n")) {
			t.Errorf("%s: no scan header:\n%s", u, data)
		}
	}
	w.spoolEmpty()
}
