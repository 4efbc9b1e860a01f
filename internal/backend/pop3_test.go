package backend

// Tests of the POP3 server over the real store, on loopback connections,
// where the reply a client gets depends on what the store found on disk
// (issue 13): a legacy UIDL list that cannot be read, a message an IMAP
// server renamed or removed after the listing.

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// oneUser is a userdb with alice, password "pw".
type oneUser struct{ maildir string }

func (u oneUser) user() *userdb.User {
	return &userdb.User{Name: "alice", Address: "alice@example.test", Mailbox: u.maildir, UID: -1, GID: -1, Enabled: true}
}

func (u oneUser) Lookup(context.Context, string) (*userdb.User, error) { return u.user(), nil }
func (u oneUser) Authenticate(_ context.Context, name, pw string) (*userdb.User, error) {
	if name != "alice" || pw != "pw" {
		return nil, failure.New(failure.NotFound, "authenticate", "authentication failed", nil)
	}
	return u.user(), nil
}
func (oneUser) Close() error { return nil }

// failingListFS fails every open of dovecot-uidlist with EIO while broken
// is set: a filer in trouble.
type failingListFS struct {
	store.OSFS
	broken atomic.Bool
}

func (f *failingListFS) OpenFile(name string, flag int, perm fs.FileMode) (store.File, error) {
	if f.broken.Load() && filepath.Base(name) == "dovecot-uidlist" {
		return nil, &os.PathError{Op: "open", Path: name, Err: syscall.EIO}
	}
	return f.OSFS.OpenFile(name, flag, perm)
}

type env struct {
	addr    string
	maildir string
	fs      *failingListFS
}

func start(t *testing.T, uidlFormat string) *env {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, ".mounted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{maildir: filepath.Join(root, "example.test", "alice", "Maildir"), fs: &failingListFS{}}
	no := false
	st, err := store.New(store.Options{MailRoot: root, MountMarker: ".mounted", Hostname: "mx1", Chown: &no, ESTALERetries: 2, FS: e.fs})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureMaildir(store.Mailbox{Path: e.maildir, UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	b := New(&Sources{Users: oneUser{e.maildir}, Volumes: volume.Single(st), Session: store.SessionOptions{LockStale: time.Minute, UIDLFormat: uidlFormat}}, Options{Logger: log})
	srv := pop3.New(b, pop3.Options{Hostname: "pop.test", AllowPlaintext: true, IdleTimeout: 10 * time.Second, Logger: log})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	e.addr = l.Addr().String()
	return e
}

// client is a raw POP3 client (testkit.LineConn under this file's names).
type client struct{ *testkit.LineConn }

func (e *env) dial(t *testing.T) *client {
	t.Helper()
	cl := &client{testkit.Dial(t, "tcp", e.addr)}
	cl.Timeout = 30 * time.Second
	cl.expect("+OK")
	return cl
}

func (c *client) cmd(line string) string      { c.T.Helper(); return c.Cmd(line) }
func (c *client) expect(prefix string) string { c.T.Helper(); return c.Expect(prefix) }
func (c *client) multi() []string             { c.T.Helper(); return c.Multi() }

func (c *client) login() {
	c.T.Helper()
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); !strings.HasPrefix(got, "+OK") {
		c.T.Fatalf("login: %q", got)
	}
}

// TestLoginWhileUIDLListUnreadable: EIO on dovecot-uidlist is a temporary
// failure of the login, not a listing with changed UIDLs; once the filer
// recovers, the old server's UIDLs are back.
func TestLoginWhileUIDLListUnreadable(t *testing.T) {
	e := start(t, store.UIDLDovecot)
	name := "1276528487.M364837P9451.kurkku,S=4,W=5"
	os.WriteFile(filepath.Join(e.maildir, "cur", name+":2,S"), []byte("x\n\n\n"), 0o600)
	os.WriteFile(filepath.Join(e.maildir, "dovecot-uidlist"), []byte("3 V1276528487 N2\n1 :"+name+"\n"), 0o600)
	e.fs.broken.Store(true)
	c := e.dial(t)
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != "-ERR [SYS/TEMP] mail store unavailable, try again later" {
		t.Fatalf("login with dovecot-uidlist unreadable: %q", got)
	}
	e.fs.broken.Store(false)
	c = e.dial(t)
	c.login()
	c.cmd("UIDL")
	if got := c.multi(); len(got) != 1 || got[0] != "1 000000014C164767" {
		t.Fatalf("UIDL after recovery: %q", got)
	}
}

// TestRetrAndDeleAfterIMAPRename: the message IMAP renamed after login is
// sent whole, with the size LIST gave, and deleted at QUIT; one removed
// meanwhile is answered as removed.
func TestRetrAndDeleAfterIMAPRename(t *testing.T) {
	e := start(t, store.UIDLMaildir)
	body := "Subject: one\n\nline\n"
	names := []string{"1700000001.M1P1.mx1,S=19,W=22", "1700000002.M1P1.mx1,S=19,W=22"}
	for _, n := range names {
		os.WriteFile(filepath.Join(e.maildir, "new", n), []byte(body), 0o600)
	}
	c := e.dial(t)
	c.login()
	c.cmd("LIST")
	list := c.multi()
	// IMAP: SELECT moves the first to cur/, STORE +FLAGS (\Seen) flags it;
	// an IMAP EXPUNGE removes the second.
	os.Rename(filepath.Join(e.maildir, "new", names[0]), filepath.Join(e.maildir, "cur", names[0]+":2,S"))
	os.Remove(filepath.Join(e.maildir, "new", names[1]))

	if got := c.cmd("RETR 1"); got != "+OK 22 octets" || list[0] != "1 22" {
		t.Fatalf("RETR 1 after the rename: %q (LIST said %q)", got, list[0])
	}
	if got := strings.Join(c.multi(), "\n"); got != "Subject: one\n\nline" {
		t.Fatalf("RETR 1 sent %q", got)
	}
	if got := c.cmd("RETR 2"); got != "-ERR message was removed" {
		t.Fatalf("RETR of a message removed meanwhile: %q", got)
	}
	c.cmd("DELE 1")
	if got := c.cmd("QUIT"); got != "+OK pop.test bye (1 messages deleted)" {
		t.Fatalf("QUIT: %q", got)
	}
	// QUIT's answer comes after the UPDATE state: the file is gone now.
	for _, d := range []string{"new", "cur"} {
		if left, _ := os.ReadDir(filepath.Join(e.maildir, d)); len(left) != 0 {
			t.Fatalf("%s/ still holds %v after DELE and QUIT", d, left[0].Name())
		}
	}
}
