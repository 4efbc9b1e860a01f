package store

import (
	"io/fs"
	"sync"
)

// faultFS wraps the real filesystem and lets a test intercept any call:
// hook gets the operation name, the path, and the real call; it may run
// the real call and still return an error (a lost NFS reply), skip it and
// fail, or pass through.
type faultFS struct {
	OSFS
	mu   sync.Mutex
	hook func(op, path string, real func() error) error
}

func (f *faultFS) do(op, path string, real func() error) error {
	f.mu.Lock()
	h := f.hook
	f.mu.Unlock()
	if h == nil {
		return real()
	}
	return h(op, realPath(path), real)
}

// realPath shows a hook the path a pinned name (/proc/self/fd/N/name, see
// pin.go) stands for now, so hooks can match on ".../tmp/..." as before.
func realPath(p string) string { return ResolvedPath(p) }

// OpenDir lets a hook act where a delivery or session resolves its
// Maildir ("opendir" on the mail root).
func (f *faultFS) OpenDir(name string) (Dir, error) {
	var d Dir
	err := f.do("opendir", name, func() error {
		var err error
		d, err = f.OSFS.OpenDir(name)
		return err
	})
	return d, err
}

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	var file File
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

// CreateAs is "open" to hooks, like OpenFile.
func (f *faultFS) CreateAs(name string, flag int, perm fs.FileMode, uid, gid int) (File, error) {
	var file File
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

func (f *faultFS) TouchNow(n string) error {
	return f.do("touch", n, func() error { return f.OSFS.TouchNow(n) })
}
func (f *faultFS) Lstat(n string) (Info, error) {
	var info Info
	err := f.do("lstat", n, func() error {
		var err error
		info, err = f.OSFS.Lstat(n)
		return err
	})
	return info, err
}

// LstatFresh is "lstat" to hooks, like Lstat.
func (f *faultFS) LstatFresh(n string) (Info, error) {
	var info Info
	err := f.do("lstat", n, func() error {
		var err error
		info, err = f.OSFS.LstatFresh(n)
		return err
	})
	return info, err
}

func (f *faultFS) Symlink(target, n string) error {
	return f.do("symlink", n, func() error { return f.OSFS.Symlink(target, n) })
}

func (f *faultFS) Readlink(n string) (string, error) {
	var target string
	err := f.do("readlink", n, func() error {
		var err error
		target, err = f.OSFS.Readlink(n)
		return err
	})
	return target, err
}

func (f *faultFS) Link(o, n string) error {
	return f.do("link", n, func() error { return f.OSFS.Link(o, n) })
}
func (f *faultFS) Rename(o, n string) error {
	return f.do("rename", n, func() error { return f.OSFS.Rename(o, n) })
}
func (f *faultFS) Remove(n string) error {
	return f.do("unlink", n, func() error { return f.OSFS.Remove(n) })
}
func (f *faultFS) Mkdir(n string, p fs.FileMode) error {
	return f.do("mkdir", n, func() error { return f.OSFS.Mkdir(n, p) })
}
func (f *faultFS) SyncDir(n string) error {
	return f.do("syncdir", n, func() error { return f.OSFS.SyncDir(n) })
}
func (f *faultFS) ReadDirNames(n string) ([]string, error) {
	var names []string
	err := f.do("readdir", n, func() error {
		var err error
		names, err = f.OSFS.ReadDirNames(n)
		return err
	})
	return names, err
}

type faultFile struct {
	File
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

func (f *faultFile) Read(p []byte) (int, error) {
	n := 0
	err := f.fs.do("read", f.path, func() error {
		var err error
		n, err = f.File.Read(p)
		return err
	})
	return n, err
}

func (f *faultFile) Chown(uid, gid int) error {
	return f.fs.do("chown", f.path, func() error { return f.File.Chown(uid, gid) })
}

func (f *faultFile) Sync() error  { return f.fs.do("fsync", f.path, f.File.Sync) }
func (f *faultFile) Close() error { return f.fs.do("close", f.path, f.File.Close) }
