package store

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// imapRename renames a listed message the way an IMAP server on the same
// Maildir does: SELECT moves new/X to cur/X:2, and STORE +FLAGS (\Seen)
// renames cur/X:2, to cur/X:2,S.
func imapRename(t *testing.T, mb Mailbox, e Entry, flags string) {
	t.Helper()
	from := filepath.Join(mb.Path, e.Dir, e.Name)
	base := e.Name
	if i := indexByte(base, ':'); i >= 0 {
		base = base[:i]
	}
	if err := os.Rename(from, filepath.Join(mb.Path, "cur", base+":2,"+flags)); err != nil {
		t.Fatal(err)
	}
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// TestRenamedMessageRetrievedAndDeleted is issue 13 finding 5: a message
// an IMAP server renamed after the POP3 listing was made must still be
// retrieved and, after QUIT, really deleted; only a message gone from new/
// and cur/ is reported as removed.
func TestRenamedMessageRetrievedAndDeleted(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "renamed")
	deliverN(t, s, mb, 4)
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	es := ss.Entries()
	imapRename(t, mb, es[0], "") // new/ -> cur/
	imapRename(t, mb, es[1], "") // new/ -> cur/, then flagged
	flagged := Entry{Dir: "cur", Name: es[1].Name + ":2,"}
	imapRename(t, mb, flagged, "S")
	if err := os.Remove(filepath.Join(mb.Path, es[3].Dir, es[3].Name)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		r, err := ss.Open(i)
		if err != nil {
			t.Fatalf("RETR %d after an IMAP rename: %v", i+1, err)
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(data) != "Subject: m\n\nline\n.dot\n" {
			t.Fatalf("RETR %d: %q, %v", i+1, data, err)
		}
	}
	if _, err := ss.Open(3); err == nil || failure.KindOf(err) != failure.NotFound {
		t.Fatalf("RETR of a message removed meanwhile: want NotFound, got %v", err)
	}
	// Rename message 3 only now, after the session opened it once under
	// its listed name: the deletion must follow it too.
	imapRename(t, mb, es[2], "S")
	if err := ss.Commit([]int{0, 1, 2, 3}, nil); err != nil {
		t.Fatalf("commit: %v", err)
	}
	left := append(listDir(t, filepath.Join(mb.Path, "new")), listDir(t, filepath.Join(mb.Path, "cur"))...)
	if len(left) != 0 {
		t.Fatalf("messages deleted by POP3 are still there: %v", left)
	}
}

// TestMoveToCurAfterIMAPMovedIt: with pop3.move_to_cur, a retrieved
// message that IMAP already moved to cur/ without \Seen gets the S flag
// where it now is, and no second copy appears.
func TestMoveToCurAfterIMAPMovedIt(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "movecur")
	deliverN(t, s, mb, 2)
	opts := sessOpts
	opts.MoveToCur = true
	ss, err := s.OpenSession(mb, opts)
	if err != nil {
		t.Fatal(err)
	}
	es := ss.Entries()
	imapRename(t, mb, es[0], "F") // flagged in IMAP, not seen
	imapRename(t, mb, es[1], "S") // already seen
	if err := ss.Commit(nil, []int{0, 1}); err != nil {
		t.Fatal(err)
	}
	got := listDir(t, filepath.Join(mb.Path, "cur"))
	slices.Sort(got)
	want := []string{es[0].Name + ":2,FS", es[1].Name + ":2,S"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("cur/ holds %v, want %v", got, want)
	}
	if n := len(listDir(t, filepath.Join(mb.Path, "new"))); n != 0 {
		t.Fatalf("new/ holds %d files", n)
	}
}

// TestDeleteFollowsRepeatedRenames: the IMAP server renames the message
// again between nfsdrop's directory read and its unlink; the deletion
// reads the directories again and still removes it.
func TestDeleteFollowsRepeatedRenames(t *testing.T) {
	fsys := &faultFS{}
	s, root := newTestStore(t, fsys)
	mb := mailbox(root, "twice")
	deliverN(t, s, mb, 1)
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	e := ss.Entries()[0]
	imapRename(t, mb, e, "")
	var again atomic.Bool
	fsys.hook = func(op, path string, real func() error) error {
		if op == "unlink" && filepath.Base(path) == e.Name+":2," && again.CompareAndSwap(false, true) {
			imapRename(t, mb, Entry{Dir: "cur", Name: e.Name + ":2,"}, "S")
		}
		return real()
	}
	if err := ss.Commit([]int{0}, nil); err != nil {
		t.Fatal(err)
	}
	if !again.Load() {
		t.Fatal("the relocated name was never unlinked")
	}
	if left := listDir(t, filepath.Join(mb.Path, "cur")); len(left) != 0 {
		t.Fatalf("message renamed twice was not deleted: %v", left)
	}
}

// TestOpenGivesUpOnEndlessRenames: a message renamed again every time it
// is found is a temporary failure, not a loop and not "removed".
func TestOpenGivesUpOnEndlessRenames(t *testing.T) {
	fsys := &faultFS{}
	s, root := newTestStore(t, fsys)
	mb := mailbox(root, "busy")
	deliverN(t, s, mb, 1)
	ss, err := s.OpenSession(mb, sessOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	base := ss.Entries()[0].Name
	flags := []string{"", "S", "", "S"}
	cur := filepath.Join(mb.Path, "new", base)
	var n atomic.Int32
	fsys.hook = func(op, path string, real func() error) error {
		if op == "open" && path == cur {
			next := filepath.Join(mb.Path, "cur", base+":2,"+flags[int(n.Add(1))%len(flags)])
			if err := os.Rename(cur, next); err != nil {
				t.Error(err)
			}
			cur = next
		}
		return real()
	}
	_, err = ss.Open(0)
	if err == nil || failure.KindOf(err) != failure.Temporary {
		t.Fatalf("want a temporary failure, got %v", err)
	}
}
