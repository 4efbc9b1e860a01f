package store

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOpenSessionHalfMadeMaildir: EnsureMaildir makes cur/, new/, tmp/ in
// that order, so a POP3 login on one machine can find a Maildir whose
// first delivery another machine is making with cur/ but no tmp/ yet (seen
// in the lab's scale-out run: "create lock file: open .../tmp/...lock: no
// such file or directory", a [SYS/TEMP] login failure). The session must
// complete the Maildir instead of failing.
func TestOpenSessionHalfMadeMaildir(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "half")
	for _, d := range []string{"cur", "new"} {
		if err := os.MkdirAll(filepath.Join(mb.Path, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatalf("login into a Maildir without tmp/: %v", err)
	}
	defer ss.Close()
	if fi, err := os.Stat(filepath.Join(mb.Path, "tmp")); err != nil || !fi.IsDir() {
		t.Fatalf("tmp/ not made: %v", err)
	}
}
