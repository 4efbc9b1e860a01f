package store

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// countFS counts the calls the store makes through FS (and through the
// Files and Dirs it hands out): on NFS each is at least one round of
// lookups for the client, most answered from its caches, some sent to the
// filer. It keeps the cost of the delivery path visible.
type countFS struct {
	OSFS
	n atomic.Int64
}

func (c *countFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	c.n.Add(1)
	f, err := c.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &countFile{File: f, n: &c.n}, nil
}
func (c *countFS) Link(o, n string) error   { c.n.Add(1); return c.OSFS.Link(o, n) }
func (c *countFS) Rename(o, n string) error { c.n.Add(1); return c.OSFS.Rename(o, n) }
func (c *countFS) Remove(n string) error    { c.n.Add(1); return c.OSFS.Remove(n) }
func (c *countFS) Lstat(n string) (Info, error) {
	c.n.Add(1)
	return c.OSFS.Lstat(n)
}
func (c *countFS) Mkdir(n string, p fs.FileMode) error { c.n.Add(1); return c.OSFS.Mkdir(n, p) }
func (c *countFS) Lchown(n string, u, g int) error     { c.n.Add(1); return c.OSFS.Lchown(n, u, g) }
func (c *countFS) SyncDir(n string) error              { c.n.Add(1); return c.OSFS.SyncDir(n) }
func (c *countFS) ReadDirNames(n string) ([]string, error) {
	c.n.Add(1)
	return c.OSFS.ReadDirNames(n)
}
func (c *countFS) TouchNow(n string) error { c.n.Add(1); return c.OSFS.TouchNow(n) }
func (c *countFS) OpenDir(n string) (Dir, error) {
	c.n.Add(1)
	d, err := c.OSFS.OpenDir(n)
	if err != nil {
		return nil, err
	}
	return &countDir{Dir: d, n: &c.n}, nil
}

type countFile struct {
	File
	n *atomic.Int64
}

func (f *countFile) Write(p []byte) (int, error) { f.n.Add(1); return f.File.Write(p) }
func (f *countFile) Read(p []byte) (int, error)  { f.n.Add(1); return f.File.Read(p) }
func (f *countFile) Sync() error                 { f.n.Add(1); return f.File.Sync() }
func (f *countFile) Stat() (Info, error)         { f.n.Add(1); return f.File.Stat() }
func (f *countFile) Chown(u, g int) error        { f.n.Add(1); return f.File.Chown(u, g) }

// Close is not counted: it sends nothing for an O_PATH descriptor, and
// for a written file the cost is in Sync.
type countDir struct {
	Dir
	n *atomic.Int64
}

func (d *countDir) Stat() (Info, error) { d.n.Add(1); return d.Dir.Stat() }
func (d *countDir) OpenBeneath(rel string, trust int) (Dir, error) {
	d.n.Add(1)
	sub, err := d.Dir.OpenBeneath(rel, trust)
	if err != nil {
		return nil, err
	}
	return &countDir{Dir: sub, n: d.n}, nil
}

// TestFSCallsPerDelivery measures the FS calls of one single-recipient
// delivery into an existing Maildir, and of a POP3 login and logout, with
// and without an administrator's symlink on the way; the bounds catch a
// regression on the delivery path (each call is NFS traffic).
func TestFSCallsPerDelivery(t *testing.T) {
	for _, layout := range []string{"plain", "domain symlink"} {
		t.Run(layout, func(t *testing.T) {
			c := &countFS{}
			s, root := newTestStore(t, c)
			if layout == "domain symlink" {
				os.MkdirAll(filepath.Join(root, "vol2", "example.org"), 0o711)
				if err := os.Symlink("vol2/example.org", filepath.Join(root, "example.org")); err != nil {
					t.Fatal(err)
				}
			}
			mb := mailbox(root, "count")
			deliverN(t, s, mb, 1) // creates the Maildir
			c.n.Store(0)
			const n = 10
			deliverN(t, s, mb, n)
			perDelivery := float64(c.n.Load()) / n
			c.n.Store(0)
			ss, err := s.OpenSession(mb, sessOpts)
			if err != nil {
				t.Fatal(err)
			}
			ss.Close()
			perSession := c.n.Load()
			t.Logf("%s: %.1f FS calls per delivery, %d per POP3 login+logout (listing %d)", layout, perDelivery, perSession, n+1)
			if limit := 14.0; !strings.Contains(layout, "symlink") && perDelivery > limit {
				t.Errorf("%.1f FS calls per delivery, more than %.0f", perDelivery, limit)
			}
		})
	}
}
