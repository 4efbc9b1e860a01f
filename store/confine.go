package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mailbox paths are checked by the user database when a user is looked
// up, but used later; a symlink swapped in between (a user who owns the
// Maildir replacing new/ by a link to another user's new/, or one who owns
// a directory above the Maildir replacing the Maildir) would make a root
// daemon write into, list or delete from another user's mailbox. So the
// store confines the use itself:
//
//   - at use time the Maildir is opened beneath the mail root as an O_PATH
//     descriptor (openat2 RESOLVE_BENEATH; a component-wise O_NOFOLLOW walk
//     where symlinks must be judged or openat2 is missing), and so are its
//     tmp/, new/ and cur/;
//   - a symlink on the way is followed only when it is owned by root or by
//     the user the daemon runs as (Postfix's safe_open rule: those are the
//     administrator's links, such as example.org -> vol2/example.org) and
//     leads to a place beneath the mail root; a symlink owned by anyone
//     else is refused (UnsafePathError);
//   - every later operation names its file through those descriptors
//     (/proc/self/fd/N/name), so the kernel starts the lookup from the
//     verified directory itself: renaming or replacing any name above it
//     afterwards changes nothing for this delivery or session.

// Dir is a directory held open (O_PATH: no read permission needed, and no
// NFS OPEN is sent) so that names below it can be used without another
// lookup of the path that led to it.
type Dir interface {
	// Path names this directory through its descriptor, for the FS
	// methods: a path below it resolves from this very directory.
	Path() string
	// Name is the path the directory was opened as, for messages.
	Name() string
	// ID is the directory's identity: Dev, Ino and the type in Mode, the
	// rest zero. It asks the kernel for nothing else (statx with
	// STATX_TYPE|STATX_INO), which an NFS client answers from the inode
	// itself: an fstat would also want the times, which a CREATE or
	// RENAME into the directory leaves invalid in an NFSv4 client's
	// cache, and cost a GETATTR.
	ID() (Info, error)
	// OpenBeneath opens the directory rel (relative, clean) beneath this
	// one without ever leaving it: a symlink on the way is followed only
	// when it is owned by root or by trustUID and stays beneath this
	// directory (none at all with trustNone); any other gives an
	// *UnsafePathError. A missing component gives ENOENT, a
	// non-directory ENOTDIR.
	OpenBeneath(rel string, trustUID int) (Dir, error)
	// Close releases the descriptor. Paths from Path must not be used
	// after it: the number may name another file by then.
	Close() error
}

// trustNone, as OpenBeneath's trustUID, follows no symlink at all, not
// even root's (the spool: the daemon's own directory, which it makes).
const trustNone = -1

// UnsafePathError is a mailbox path refused by the symlink rule.
type UnsafePathError struct {
	// Path is the offending symlink (as opened, under the directory the
	// resolution started from).
	Path string
	// Owner is the symlink's owner.
	Owner int
	// Why says what is wrong: "symlink not owned by root" or "symlink
	// leads outside the mail root".
	Why string
}

func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("%s: %s (owner uid %d)", e.Path, e.Why, e.Owner)
}

// procFD is where Linux shows a process's descriptors as paths.
const procFD = "/proc/self/fd/"

// ResolvedPath returns the path a name made through a held directory
// (/proc/self/fd/N/name, see pin.go) stands for now, and any other name
// unchanged: for fault-injection wrappers of FS, which match on paths
// such as ".../new/".
func ResolvedPath(p string) string {
	rest, ok := strings.CutPrefix(p, procFD)
	if !ok {
		return p
	}
	n, tail, _ := strings.Cut(rest, "/")
	dir, err := os.Readlink(procFD + n)
	if err != nil {
		return p
	}
	if tail == "" {
		return dir
	}
	return dir + "/" + tail
}

// OpenDir opens the directory name (following symlinks: the mail root is
// the administrator's choice, and may itself be a link) as a Dir.
func (OSFS) OpenDir(name string) (Dir, error) {
	fd, err := unix.Open(name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return &osDir{fd: fd, name: name}, nil
}

type osDir struct {
	fd   int
	name string
}

func (d *osDir) Path() string { return procFD + strconv.Itoa(d.fd) }
func (d *osDir) Name() string { return d.name }

func (d *osDir) ID() (Info, error) {
	var stx unix.Statx_t
	if err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO, &stx); err != nil {
		return Info{}, &os.PathError{Op: "statx", Path: d.name, Err: err}
	}
	info := infoOfStatx(&stx)
	return Info{Dev: info.Dev, Ino: info.Ino, Mode: info.Mode.Type()}, nil
}

func (d *osDir) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// OpenBeneath tries openat2 refusing every symlink first: one system call,
// and the common case (no symlink at all) needs nothing more. A symlink
// (ELOOP) or a kernel without openat2 (ENOSYS before Linux 5.6; EPERM from
// some seccomp filters) takes the component-wise walk, which applies the
// owner rule.
func (d *osDir) OpenBeneath(rel string, trustUID int) (Dir, error) {
	name := filepath.Join(d.name, rel)
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(d.fd, rel, &how)
	if err == nil {
		return &osDir{fd: fd, name: name}, nil
	}
	if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return nil, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	fd, err = walkBeneath(d.fd, d.name, rel, trustUID)
	if err != nil {
		return nil, err
	}
	return &osDir{fd: fd, name: name}, nil
}

// maxSymlinkHops is the kernel's own limit (MAXSYMLINKS).
const maxSymlinkHops = 40

// walkBeneath opens rel beneath the directory rootFD (named rootName) one
// component at a time with O_PATH|O_NOFOLLOW, so that each component is
// looked up in a directory we hold and every symlink is seen before it is
// followed. A followed symlink is expanded lexically against the
// symlink-free prefix that led to it and the walk restarts from rootFD:
// whatever the link says, the walk never leaves rootFD, and each component
// it then meets is judged again.
func walkBeneath(rootFD int, rootName, rel string, trustUID int) (int, error) {
	pending := splitPath(rel)
	var walked []string
	cur, err := unix.Dup(rootFD)
	if err != nil {
		return -1, &os.PathError{Op: "dup", Path: rootName, Err: err}
	}
	fail := func(err error) (int, error) {
		unix.Close(cur)
		return -1, err
	}
	for hops := 0; len(pending) > 0; {
		elem := pending[0]
		pending = pending[1:]
		here := filepath.Join(rootName, filepath.Join(walked...), elem)
		fd, err := unix.Openat(cur, elem, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(&os.PathError{Op: "openat", Path: here, Err: err})
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fail(&os.PathError{Op: "fstat", Path: here, Err: err})
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			unix.Close(cur)
			cur = fd
			walked = append(walked, elem)
			continue
		case unix.S_IFLNK:
		default:
			unix.Close(fd)
			return fail(&os.PathError{Op: "openat", Path: here, Err: unix.ENOTDIR})
		}
		target, err := readlinkFD(fd)
		unix.Close(fd)
		if err != nil {
			return fail(&os.PathError{Op: "readlink", Path: here, Err: err})
		}
		if trustUID == trustNone {
			return fail(&UnsafePathError{Path: here, Owner: int(st.Uid), Why: "symlink where none is followed"})
		}
		if st.Uid != 0 && int(st.Uid) != trustUID {
			return fail(&UnsafePathError{Path: here, Owner: int(st.Uid), Why: "symlink not owned by root"})
		}
		if hops++; hops > maxSymlinkHops {
			return fail(&os.PathError{Op: "openat", Path: here, Err: unix.ELOOP})
		}
		next, ok := expandLink(rootName, walked, target)
		if !ok {
			return fail(&UnsafePathError{Path: here, Owner: int(st.Uid), Why: "symlink leads outside the mail root"})
		}
		pending = append(splitPath(next), pending...)
		walked = nil
		unix.Close(cur)
		if cur, err = unix.Dup(rootFD); err != nil {
			return -1, &os.PathError{Op: "dup", Path: rootName, Err: err}
		}
	}
	return cur, nil
}

// expandLink returns, relative to the root, where a symlink found after
// the symlink-free components walked leads; ok is false when that is not
// beneath the root. An absolute target is taken as the path it names from
// "/" and must lie below rootName (the path the root was opened as).
func expandLink(rootName string, walked []string, target string) (string, bool) {
	var p string
	if filepath.IsAbs(target) {
		rel, err := filepath.Rel(filepath.Clean(rootName), filepath.Clean(target))
		if err != nil {
			return "", false
		}
		p = rel
	} else {
		p = filepath.Clean(filepath.Join(filepath.Join(walked...), target))
	}
	if p == ".." || strings.HasPrefix(p, "../") || filepath.IsAbs(p) {
		return "", false
	}
	return p, true
}

func splitPath(rel string) []string {
	var out []string
	for _, e := range strings.Split(filepath.Clean(rel), "/") {
		if e != "" && e != "." {
			out = append(out, e)
		}
	}
	return out
}

// readlinkFD reads the symlink an O_PATH|O_NOFOLLOW descriptor holds
// (readlinkat with an empty name, Linux 2.6.39 and later).
func readlinkFD(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// checkProcFD refuses to start without /proc (a chroot, a bare container):
// every file in a Maildir is named through /proc/self/fd, and failing
// every delivery with ENOENT later would be far harder to understand.
func checkProcFD(fsys FS) error {
	if _, ok := fsys.(OSFS); !ok {
		return nil
	}
	if _, err := os.Stat(procFD); err != nil {
		return fmt.Errorf("store: %s is needed to confine mailbox paths (is /proc mounted?): %w", procFD, err)
	}
	return nil
}
