package dovecot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDovecot checks the harness itself: Dovecot's LDA delivers into a
// home from the passwd-file, IMAP SELECT moves the message to cur/ and
// lists it in dovecot-uidlist, STORE renames the file with the flag, and
// UID EXPUNGE removes it.
func TestDovecot(t *testing.T) {
	// Not t.TempDir(): its parent is 0700, and Dovecot's auth process
	// (user dovecot) must read the passwd-file.
	dir, err := os.MkdirTemp("", "dovecot-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "alice")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, TestUID, TestGID); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users")
	line := "alice@example.test:{PLAIN}pw:5000:5000::" + home + "::\n"
	if err := os.WriteFile(users, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	in := StartT(t, Options{PasswdFile: users})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg := "From: a@example.net\r\nTo: alice@example.test\r\nSubject: one\r\nMessage-ID: <one@example.net>\r\n\r\nbody\r\n"
	if err := in.Deliver(ctx, "alice@example.test", []byte(msg)); err != nil {
		t.Fatal(err)
	}
	maildir := filepath.Join(home, "Maildir")
	if n := dirNames(t, filepath.Join(maildir, "new")); len(n) != 1 {
		t.Fatalf("new/ after dovecot-lda: %q", n)
	}

	cl, err := Dial(ctx, in.Addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Login("alice@example.test", "wrong"); err == nil {
		t.Fatal("LOGIN with a wrong password worked")
	}
	if err := cl.Login("alice@example.test", "pw"); err != nil {
		t.Fatal(err)
	}
	mb, err := cl.Select("INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if mb.Exists != 1 {
		t.Fatalf("SELECT: %+v", mb)
	}
	cur := dirNames(t, filepath.Join(maildir, "cur"))
	if len(cur) != 1 || len(dirNames(t, filepath.Join(maildir, "new"))) != 0 {
		t.Fatalf("after SELECT: cur/ %q, new/ %q", cur, dirNames(t, filepath.Join(maildir, "new")))
	}
	uidlist, err := os.ReadFile(filepath.Join(maildir, "dovecot-uidlist"))
	if err != nil {
		t.Fatal(err)
	}
	base, _, _ := strings.Cut(cur[0], ":")
	if !strings.Contains(string(uidlist), ":"+base) {
		t.Fatalf("dovecot-uidlist %q does not list %s", uidlist, base)
	}
	msgs, err := cl.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].MessageID != "<one@example.net>" || msgs[0].Size < int64(len(msg)) {
		t.Fatalf("FETCH: %+v", msgs)
	}
	if err := cl.Store(msgs[0].UID, "+FLAGS", `\Seen \Flagged`); err != nil {
		t.Fatal(err)
	}
	if cur := dirNames(t, filepath.Join(maildir, "cur")); len(cur) != 1 || !strings.HasSuffix(cur[0], ":2,FS") {
		t.Fatalf("after STORE +FLAGS (\\Seen \\Flagged): cur/ %q", cur)
	}
	if err := cl.Expunge(msgs[0].UID); err != nil {
		t.Fatal(err)
	}
	if cur := dirNames(t, filepath.Join(maildir, "cur")); len(cur) != 0 {
		t.Fatalf("after UID EXPUNGE: cur/ %q", cur)
	}
	if err := cl.Logout(); err != nil {
		t.Fatal(err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
