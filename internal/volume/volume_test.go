package volume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// countFS counts the calls Locate could make.
type countFS struct {
	store.FS
	n atomic.Int64
}

func (c *countFS) Lstat(name string) (store.Info, error) {
	c.n.Add(1)
	return c.FS.Lstat(name)
}

func (c *countFS) LstatFresh(name string) (store.Info, error) {
	c.n.Add(1)
	return c.FS.LstatFresh(name)
}

func (c *countFS) OpenDir(name string) (store.Dir, error) {
	c.n.Add(1)
	return c.FS.OpenDir(name)
}

func (c *countFS) OpenFile(name string, flag int, perm fs.FileMode) (store.File, error) {
	c.n.Add(1)
	return c.FS.OpenFile(name, flag, perm)
}

// testSet makes volumes named by names below a temporary mail root, each
// mounted (its marker exists), with the health in health (nil: up).
func testSet(t *testing.T, names []string, health map[string]func() error) (*Set, string, *countFS) {
	t.Helper()
	root := t.TempDir()
	cfs := &countFS{FS: store.OSFS{}}
	o := Options{MailRoot: root}
	for _, n := range names {
		p := filepath.Join(root, n)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, ".mounted"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		o.Volumes = append(o.Volumes, VolumeOptions{Name: n, Path: p, MountMarker: ".mounted", NewMailboxes: true, FS: cfs,
			Err: health[n], StoreOptions: store.Options{Hostname: "test"}})
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return s, root, cfs
}

func placed(root, rel string) *userdb.User {
	return &userdb.User{Name: rel, Mailbox: filepath.Join(root, rel), UID: -1, GID: -1}
}

// TestOrderIsFixed: the placement order is a pure function of the names
// and the path, the same on every machine and in every release. These
// values were computed once; a change here moves users' new mailboxes.
func TestOrderIsFixed(t *testing.T) {
	s, _, _ := testSet(t, []string{"filer1", "filer2", "filer3"}, nil)
	for rel, want := range map[string]string{
		"example.org/alice/Maildir": "filer1 filer3 filer2",
		"example.org/bob/Maildir":   "filer3 filer1 filer2",
		"example.net/carol/Maildir": "filer2 filer1 filer3",
	} {
		got := ""
		for i, v := range s.Order(rel) {
			if i > 0 {
				got += " "
			}
			got += v.Name
		}
		if got != want {
			t.Errorf("Order(%q) = %s, want %s", rel, got, want)
		}
	}
}

// TestOrderSpreads: new mailboxes spread over the volumes, and a volume
// added later takes the first place of about its share of paths, leaving
// the relative order of the others unchanged (rendezvous hashing).
func TestOrderSpreads(t *testing.T) {
	three, _, _ := testSet(t, []string{"a", "b", "c"}, nil)
	four, _, _ := testSet(t, []string{"a", "b", "c", "d"}, nil)
	const n = 3000
	first := map[string]int{}
	for i := range n {
		rel := fmt.Sprintf("example.org/user%d/Maildir", i)
		o3, o4 := three.Order(rel), four.Order(rel)
		first[o3[0].Name]++
		var without []string
		for _, v := range o4 {
			if v.Name != "d" {
				without = append(without, v.Name)
			}
		}
		for j := range o3 {
			if o3[j].Name != without[j] {
				t.Fatalf("%s: adding d changed the order of the others: %v vs %v", rel, names(o3), without)
			}
		}
	}
	for name, c := range first {
		if c < n/3*8/10 || c > n/3*12/10 {
			t.Errorf("volume %s is first for %d of %d paths, want about %d", name, c, n, n/3)
		}
	}
}

func names(vs []*Volume) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Name)
	}
	return out
}

// TestLocateFindsExisting: a mailbox is found where it exists, even when
// it is not on its first choice (it was created before a volume was
// added); a new one goes to the first volume in its order that takes new
// mailboxes.
func TestLocateFindsExisting(t *testing.T) {
	s, root, _ := testSet(t, []string{"a", "b", "c"}, nil)
	ctx := context.Background()
	rel := "example.org/alice/Maildir"
	order := s.Order(rel)
	last := order[len(order)-1]
	if err := os.MkdirAll(filepath.Join(last.Path, rel), 0o700); err != nil {
		t.Fatal(err)
	}
	v, mb, err := s.Locate(ctx, placed(root, rel))
	if err != nil || v != last || mb.Path != filepath.Join(last.Path, rel) {
		t.Fatalf("existing: %v %+v %v, want volume %s", v, mb, err, last.Name)
	}

	rel = "example.org/bob/Maildir"
	order = s.Order(rel)
	v, mb, err = s.Locate(ctx, placed(root, rel))
	if err != nil || v != order[0] || mb.Path != filepath.Join(order[0].Path, rel) {
		t.Fatalf("new: %v %+v %v, want volume %s", v, mb, err, order[0].Name)
	}
	order[0].NewMailboxes = false
	if v, _, err = s.Locate(ctx, placed(root, rel)); err != nil || v != order[1] {
		t.Fatalf("new, first choice full: %v %v, want volume %s", v, err, order[1].Name)
	}
}

// TestLocateNamed: a mailbox the user database names a volume for is on
// it, without a file system call; an unknown volume is temporary.
func TestLocateNamed(t *testing.T) {
	s, root, cfs := testSet(t, []string{"a", "b"}, nil)
	u := &userdb.User{Mailbox: filepath.Join(root, "b/x/Maildir"), Volume: "b"}
	before := cfs.n.Load()
	v, mb, err := s.Locate(context.Background(), u)
	if err != nil || v.Name != "b" || mb.Path != u.Mailbox {
		t.Fatalf("named: %v %+v %v", v, mb, err)
	}
	if n := cfs.n.Load() - before; n != 0 {
		t.Errorf("a named mailbox took %d file system calls", n)
	}
	u.Volume = "z"
	_, _, err = s.Locate(context.Background(), u)
	if fe := failure.As(err); fe == nil || fe.Kind != failure.Temporary {
		t.Errorf("unknown volume: %v", err)
	}
}

// TestLocateDownVolume: a down volume fails its users at once, naming the
// volume and not the path; a placed mailbox whose order passes a down
// volume before finding it is not placed elsewhere.
func TestLocateDownVolume(t *testing.T) {
	down := errors.New("probe timed out")
	var bDown atomic.Bool
	s, root, _ := testSet(t, []string{"a", "b"}, map[string]func() error{
		"b": func() error {
			if bDown.Load() {
				return down
			}
			return nil
		},
	})
	bDown.Store(true)
	_, _, err := s.Locate(context.Background(), &userdb.User{Mailbox: filepath.Join(root, "b/x"), Volume: "b"})
	fe := failure.As(err)
	if fe == nil || fe.Kind != failure.Temporary || !errors.Is(err, down) || fe.Op != "volume b" {
		t.Fatalf("named on a down volume: %#v", err)
	}
	// Find a path whose order starts with b: it must not land on a.
	for i := 0; ; i++ {
		rel := fmt.Sprintf("example.org/u%d/Maildir", i)
		if s.Order(rel)[0].Name != "b" {
			continue
		}
		if _, _, err := s.Locate(context.Background(), placed(root, rel)); failure.As(err).Kind != failure.Temporary {
			t.Fatalf("placed, first choice down: %v", err)
		}
		bDown.Store(false)
		if v, _, err := s.Locate(context.Background(), placed(root, rel)); err != nil || v.Name != "b" {
			t.Fatalf("placed, first choice up again: %v %v", v, err)
		}
		break
	}
}

// TestLocateUnmountedVolume: an empty mount point (marker missing) is not
// taken for a volume without the mailbox.
func TestLocateUnmountedVolume(t *testing.T) {
	s, root, _ := testSet(t, []string{"a", "b"}, nil)
	rel := "example.org/alice/Maildir"
	first := s.Order(rel)[0]
	if err := os.Remove(filepath.Join(first.Path, ".mounted")); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Locate(context.Background(), placed(root, rel))
	if fe := failure.As(err); fe == nil || fe.Kind != failure.Temporary || fe.Op != "volume "+first.Name {
		t.Fatalf("unmounted first choice: %v", err)
	}
}

// TestLocateSingleVolumeNoCalls: with the one default volume at the mail
// root, Locate makes no file system call and returns the user's path.
func TestLocateSingleVolumeNoCalls(t *testing.T) {
	root := t.TempDir()
	cfs := &countFS{FS: store.OSFS{}}
	s, err := Open(Options{MailRoot: root, Volumes: []VolumeOptions{{Name: DefaultName, Path: root, NewMailboxes: true, FS: cfs,
		MountMarker: ".m", StoreOptions: store.Options{Hostname: "h"}}}})
	if err != nil {
		t.Fatal(err)
	}
	before := cfs.n.Load()
	u := placed(root, "example.org/a/Maildir")
	v, mb, err := s.Locate(context.Background(), u)
	if err != nil || v.Name != DefaultName || mb.Path != u.Mailbox {
		t.Fatalf("%v %+v %v", v, mb, err)
	}
	if n := cfs.n.Load() - before; n != 0 {
		t.Errorf("one volume: Locate made %d file system calls", n)
	}
}

// TestRelocate: a moved mailbox is the same path on the other volume.
func TestRelocate(t *testing.T) {
	s, root, _ := testSet(t, []string{"a", "b"}, nil)
	v, mb, err := s.Relocate(s.ByName("a"), store.Mailbox{Path: filepath.Join(root, "a/x/Maildir")}, "b")
	if err != nil || v.Name != "b" || mb.Path != filepath.Join(root, "b/x/Maildir") {
		t.Fatalf("%v %+v %v", v, mb, err)
	}
	if _, _, err := s.Relocate(s.ByName("a"), mb, "zz"); failure.As(err).Kind != failure.Temporary {
		t.Errorf("unknown target: %v", err)
	}
}
