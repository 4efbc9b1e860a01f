package userdb

import (
	"os"
	"path/filepath"
	"testing"
)

// resolvePath (open O_PATH, read the name back) must give what
// filepath.EvalSymlinks gives, which the confinement rule was written
// against: absolute and relative links, links to directories on the way,
// a link as the last element; and fail where it fails.
func TestResolvePathMatchesEvalSymlinks(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	mk("root/vol2/example.org/u/Maildir")
	mk("outside/x")
	ln("vol2/example.org", "root/example.org")                // relative, in the root
	ln(filepath.Join(dir, "outside"), "root/vol2/out")        // absolute, out of it
	ln("../../outside/x", "root/vol2/example.org/u/Maildir2") // relative, last element
	ln("missing", "root/dangling")
	ln("loop2", "root/loop1")
	ln("loop1", "root/loop2")
	if err := os.WriteFile(filepath.Join(dir, "root/file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"root", "root/example.org/u/Maildir", "root/vol2/out", "root/vol2/out/x",
		"root/example.org/u/Maildir2", "root/file",
		"root/dangling", "root/loop1", "root/nothing", "root/file/x",
	} {
		path := filepath.Join(dir, p)
		want, werr := filepath.EvalSymlinks(path)
		got, gerr := resolvePath(path)
		if got != want || (werr == nil) != (gerr == nil) {
			t.Errorf("%s: resolvePath = %q, %v; EvalSymlinks = %q, %v", p, got, gerr, want, werr)
		}
	}
}
