package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FS is every filesystem call the store makes. It exists so that tests can
// make the store meet what NFS does: replies lost and operations
// retransmitted (link answering EEXIST after it succeeded), write errors that
// only surface at fsync or close, ESTALE handles, a full disk mid-write. The
// production implementation is OSFS.
type FS interface {
	// OpenFile is open(2).
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// CreateAs is OpenFile with O_CREAT made with the filesystem uid and
	// gid set to uid and gid (-1: unchanged) for this one call
	// (setfsuid/setfsgid on the calling thread only), so that a process
	// running as root creates a file already owned by a mailbox's owner:
	// the NFS client sends the caller's filesystem credentials with the
	// CREATE (or OPEN), and the server makes the file theirs, where a
	// create as root and an fchown cost a CREATE and a SETATTR. The
	// permission to create is then theirs too (EACCES when they may not
	// write the directory).
	CreateAs(name string, flag int, perm fs.FileMode, uid, gid int) (File, error)
	// Link is link(2): not idempotent over NFS.
	Link(oldname, newname string) error
	// Rename is rename(2): not idempotent over NFS.
	Rename(oldname, newname string) error
	// Remove is unlink(2) (or rmdir(2) for an empty directory).
	Remove(name string) error
	// Lstat is lstat(2).
	Lstat(name string) (Info, error)
	// Mkdir is mkdir(2).
	Mkdir(name string, perm fs.FileMode) error
	// Lchown is lchown(2).
	Lchown(name string, uid, gid int) error
	// SyncDir opens a directory and fsyncs it, which is what makes a new
	// directory entry durable on local filesystems (on NFS, LINK and
	// RENAME are synchronous on the server and this is nearly free).
	SyncDir(name string) error
	// DirOpsSynchronous reports whether the filesystem holding the
	// directory name makes a new directory entry durable before the call
	// that made it returns, so that fsyncing the directory adds nothing:
	// NFS, where the server puts CREATE, LINK, RENAME and REMOVE on stable
	// storage before it answers, and the Linux client's directory fsync
	// is a no-op ("All directory operations under NFS are synchronous, so
	// fsync() is a dummy operation", fs/nfs/dir.c) while the open before
	// it costs a GETATTR (close-to-open). One statfs(2): callers cache the
	// answer per device.
	DirOpsSynchronous(name string) (bool, error)
	// ReadDirNames lists a directory's entries (no "." or "..").
	ReadDirNames(name string) ([]string, error)
	// TouchNow sets a file's times to "now" as the file server sees it
	// (utimensat with UTIME_NOW, which an NFS client sends as
	// SET_TO_SERVER_TIME), so that staleness is judged on one clock. A
	// symlink's own times are set, never its target's (the session lock
	// is a symlink).
	TouchNow(name string) error
	// Symlink is symlink(2): one atomic call on every NFS version (it
	// makes the name or fails with EEXIST), not idempotent over NFS.
	Symlink(target, name string) error
	// Readlink is readlink(2).
	Readlink(name string) (string, error)
	// LstatFresh is lstat(2) answered by the file server, not by the NFS
	// client's attribute cache (statx with AT_STATX_FORCE_SYNC: one
	// GETATTR; a name whose file was removed on the server is looked up
	// again). For what another machine may have just changed.
	LstatFresh(name string) (Info, error)
	// OpenDir opens a directory as a Dir (O_PATH), from which mailbox
	// paths are resolved with the symlink rule and then used (confine.go).
	OpenDir(name string) (Dir, error)
}

// File is an open file in the store.
type File interface {
	Write(p []byte) (int, error)
	Read(p []byte) (int, error)
	Sync() error
	Close() error
	Stat() (Info, error)
	Chown(uid, gid int) error
}

// Info is the part of stat(2) the store needs: identity for the
// verify-after-EEXIST rule, size for quota, times for the sweeper.
type Info struct {
	Dev, Ino uint64
	Nlink    uint64
	Size     int64
	Mode     fs.FileMode
	ModTime  time.Time
	ChangeAt time.Time
	UID, GID int
}

// SameFile reports whether a and b are the same inode.
func (a Info) SameFile(b Info) bool { return a.Dev == b.Dev && a.Ino == b.Ino }

// OSFS is the real filesystem.
type OSFS struct{}

var _ FS = OSFS{}

func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := openUnpolled(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// openUnpolled is os.OpenFile for the store's regular files and
// directories, minus the attempt to register them with the runtime's
// poller: os.OpenFile sets O_NONBLOCK (two fcntl), tries epoll_ctl (which
// refuses regular files) and clears O_NONBLOCK again (two fcntl), five
// syscalls that do nothing on every open, twice per delivery. os.NewFile
// on a blocking descriptor costs one fcntl. The store's files carry no
// setuid, setgid or sticky bits, so perm's permission bits are the mode;
// the error is an *os.PathError, as from os.OpenFile.
func openUnpolled(name string, flag int, perm fs.FileMode) (*os.File, error) {
	for {
		fd, err := syscall.Open(name, flag|syscall.O_CLOEXEC, uint32(perm.Perm()))
		if err == syscall.EINTR {
			continue // as os.OpenFile: a signal during an open over NFS
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		return os.NewFile(uintptr(fd), name), nil
	}
}

func (OSFS) CreateAs(name string, flag int, perm fs.FileMode, uid, gid int) (File, error) {
	// The filesystem ids are per thread: keep this goroutine on its
	// thread while they are changed, and give the thread back only with
	// root's ids restored (a thread left locked ends with its goroutine).
	runtime.LockOSThread()
	prevGID, prevUID := -1, -1
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
	}()
	if gid >= 0 {
		prevGID, _ = unix.SetfsgidRetGid(gid)
	}
	if uid >= 0 {
		prevUID, _ = unix.SetfsuidRetUid(uid)
	}
	f, err := openUnpolled(name, flag|os.O_CREATE, perm)
	if prevUID >= 0 {
		unix.Setfsuid(prevUID)
	}
	if prevGID >= 0 {
		unix.Setfsgid(prevGID)
	}
	// setfsuid(-1) changes nothing and answers the current id.
	curUID, _ := unix.SetfsuidRetUid(-1)
	curGID, _ := unix.SetfsgidRetGid(-1)
	restored = (prevUID < 0 || curUID == prevUID) && (prevGID < 0 || curGID == prevGID)
	if !restored {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("store: could not restore the filesystem ids after creating %s (fsuid %d, fsgid %d)", name, curUID, curGID)
	}
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (OSFS) Link(oldname, newname string) error { return os.Link(oldname, newname) }

// Rename calls rename(2) itself: os.Rename first lstats newname (to refuse
// a directory there, which rename(2) refuses anyway), and on NFS that
// lookup of a name that does not exist yet is a LOOKUP sent to the filer
// for nothing (lookupcache=positive keeps no negative answer), and on
// NFSv4 the negative dentry it leaves is looked up once more by the
// rename itself.
func (OSFS) Rename(oldname, newname string) error {
	if err := syscall.Rename(oldname, newname); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}
func (OSFS) Remove(name string) error {
	// os.Remove tries unlink then rmdir and may report the rmdir error
	// for a file; call unlink first ourselves so the errno is the real one.
	err := syscall.Unlink(name)
	if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.EPERM) {
		if rerr := syscall.Rmdir(name); rerr == nil {
			return nil
		}
	}
	if err != nil {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}
func (OSFS) Lstat(name string) (Info, error) {
	fi, err := os.Lstat(name)
	if err != nil {
		return Info{}, err
	}
	return infoOf(fi), nil
}
func (OSFS) Mkdir(name string, perm fs.FileMode) error { return os.Mkdir(name, perm) }
func (OSFS) Lchown(name string, uid, gid int) error    { return os.Lchown(name, uid, gid) }
func (OSFS) SyncDir(name string) error {
	d, err := openUnpolled(name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return serr
	}
	return cerr
}
func (OSFS) DirOpsSynchronous(name string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(name, &st); err != nil {
		return false, &os.PathError{Op: "statfs", Path: name, Err: err}
	}
	return st.Type == unix.NFS_SUPER_MAGIC, nil
}

func (OSFS) ReadDirNames(name string) ([]string, error) {
	d, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

func (OSFS) TouchNow(name string) error {
	now := unix.Timespec{Nsec: unix.UTIME_NOW}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, name, []unix.Timespec{now, now}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: name, Err: err}
	}
	return nil
}

func (OSFS) Symlink(target, name string) error    { return os.Symlink(target, name) }
func (OSFS) Readlink(name string) (string, error) { return os.Readlink(name) }

func (OSFS) LstatFresh(name string) (Info, error) {
	var stx unix.Statx_t
	const mask = unix.STATX_TYPE | unix.STATX_MODE | unix.STATX_NLINK | unix.STATX_UID | unix.STATX_GID |
		unix.STATX_MTIME | unix.STATX_CTIME | unix.STATX_INO | unix.STATX_SIZE
	if err := unix.Statx(unix.AT_FDCWD, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_FORCE_SYNC, mask, &stx); err != nil {
		return Info{}, &os.PathError{Op: "statx", Path: name, Err: err}
	}
	return infoOfStatx(&stx), nil
}

// infoOfStatx is infoOf for statx(2), with the same fields filled.
func infoOfStatx(stx *unix.Statx_t) Info {
	mode := fs.FileMode(stx.Mode & 0o777)
	switch stx.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFREG:
	default:
		mode |= fs.ModeIrregular
	}
	return Info{
		Dev:      unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		Ino:      stx.Ino,
		Nlink:    uint64(stx.Nlink),
		Size:     int64(stx.Size),
		Mode:     mode,
		ModTime:  time.Unix(stx.Mtime.Sec, int64(stx.Mtime.Nsec)),
		ChangeAt: time.Unix(stx.Ctime.Sec, int64(stx.Ctime.Nsec)),
		UID:      int(stx.Uid),
		GID:      int(stx.Gid),
	}
}

type osFile struct{ f *os.File }

func (o osFile) Write(p []byte) (int, error) { return o.f.Write(p) }
func (o osFile) Read(p []byte) (int, error)  { return o.f.Read(p) }
func (o osFile) Sync() error                 { return o.f.Sync() }
func (o osFile) Close() error                { return o.f.Close() }
func (o osFile) Chown(uid, gid int) error    { return o.f.Chown(uid, gid) }
func (o osFile) Stat() (Info, error) {
	fi, err := o.f.Stat()
	if err != nil {
		return Info{}, err
	}
	return infoOf(fi), nil
}

func infoOf(fi fs.FileInfo) Info {
	in := Info{Size: fi.Size(), Mode: fi.Mode(), ModTime: fi.ModTime(), ChangeAt: fi.ModTime(), UID: -1, GID: -1}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		in.Dev = uint64(st.Dev)
		in.Ino = st.Ino
		in.Nlink = uint64(st.Nlink)
		in.UID = int(st.Uid)
		in.GID = int(st.Gid)
		in.ChangeAt = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return in
}
