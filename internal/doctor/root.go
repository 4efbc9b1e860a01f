package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// CheckMarker checks store.mount_marker under root. nfs tells whether the
// mail root is an NFS mount (a disabled guard matters only there).
func CheckMarker(root, marker string, nfs bool) Result {
	if marker == "" {
		if nfs {
			return warn("mount-marker", "store.mount_marker is \"\": the mount guard is off, so if the export is not mounted, mail is delivered into the empty local mount point and disappears when the export is mounted again",
				"create a file on the export (touch "+filepath.Join(root, ".nfsdrop-mounted")+" while it is mounted) and set store.mount_marker = \".nfsdrop-mounted\"")
		}
		return ok("mount-marker", "mount guard off (store.mount_marker = \"\"): fine for a local mail root")
	}
	p := filepath.Join(root, marker)
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail("mount-marker", p+" is missing: every delivery is deferred (451 4.3.0 mail store not mounted) and POP3 logins fail",
			"mount the NFS export on "+root+"; if it is mounted, create the marker on the export: touch "+p)
	case err != nil:
		return fail("mount-marker", "cannot look at "+p+": "+errText(err)+"; deliveries are deferred",
			"make "+p+" reachable for nfsdrop (permissions of "+root+", the mount)")
	}
	kind := "file"
	if fi.IsDir() {
		kind = "directory"
	}
	return ok("mount-marker", p+" present ("+kind+")")
}

// UnmappedOwner is the uid the Linux NFSv4 client shows for a file whose
// owner name it could not map to a number (nfs_fhget's -2).
const UnmappedOwner = 4294967294

// CheckPermissions judges the mail root's type, mode and owner. squashedTo
// is the owner a file created by root got in the mail root (-1: unknown or
// not running as root); another uid than 0 means the server squashes root.
func CheckPermissions(root string, fi fs.FileInfo, statErr error, squashedTo int) Result {
	switch {
	case errors.Is(statErr, fs.ErrNotExist):
		return fail("permissions", root+" does not exist",
			"mount the export on "+root+" (or correct store.mail_root)")
	case statErr != nil:
		return fail("permissions", "cannot stat "+root+": "+errText(statErr), "check the permissions of the directories above "+root)
	case !fi.IsDir():
		return fail("permissions", root+" is not a directory", "correct store.mail_root")
	}
	uid, gid := -1, -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(st.Uid), int(st.Gid)
	}
	detail := fmt.Sprintf("%s, owner %s, group %s", fi.Mode().String(), userName(uid), groupName(gid))
	var res Result
	switch mode := fi.Mode(); {
	case mode.Perm()&0o002 != 0:
		res = warn("permissions", detail+": world-writable, so any local user can create directories in the mail root (a Maildir for a user who has none yet) and read what is delivered there",
			fmt.Sprintf("chmod o-w %s (0755 or 0711 is enough: nfsdrop makes Maildirs 0700)", root))
	case os.Geteuid() != 0 && unix.Access(root, unix.W_OK|unix.X_OK) != nil:
		res = warn("permissions", fmt.Sprintf("%s: not writable for uid %d, who runs this check", detail, os.Geteuid()),
			"run nfsdrop (and this check) as the user owning the mail, or as root")
	default:
		res = ok("permissions", detail)
	}
	if squashedTo == UnmappedOwner {
		res.Status = FAIL
		res.Detail += fmt.Sprintf("; a file root made here reads back as owned by uid %d: the NFSv4 client could not map the owner name the file server sent "+
			"(\"root@domain\"), so every file shows as nobody's, the ownership of Maildirs and of the POP3 lock cannot be judged, "+
			"and every stat of a file costs a GETATTR (the owner attribute stays invalid in the client's cache)", UnmappedOwner)
		res.Fix = "have the file server send numeric owners for sec=sys (Linux knfsd does by default; nfs-ganesha: Only_Numeric_Owners = true in NFSV4; " +
			"a NAS: its NFSv4 numeric-ids option), or run the idmapper with the server's NFSv4 domain (nfsidmap, /etc/idmapd.conf)"
		return res
	}
	if squashedTo > 0 {
		res.Status = max(res.Status, WARN)
		res.Detail += fmt.Sprintf("; the file server squashes root: a file root made here belongs to %s, so nfsdrop running as root cannot give new Maildirs to their users (chown fails)", userName(squashedTo))
		if res.Fix == "" {
			res.Fix = "export the mail with no_root_squash to the delivery machines, or run nfsdrop as the user that owns the mail"
		}
	}
	return res
}

func userName(uid int) string {
	if uid < 0 {
		return "unknown"
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (%d)", u.Username, uid)
	}
	return strconv.Itoa(uid)
}

func groupName(gid int) string {
	if gid < 0 {
		return "unknown"
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return fmt.Sprintf("%s (%d)", g.Name, gid)
	}
	return strconv.Itoa(gid)
}

// Space thresholds.
const (
	warnFreePercent = 10
	failFreePercent = 2
	failFreeBytes   = 100 << 20
	failFreeInodes  = 10000
)

// SpaceInfo is what statfs(2) says about the mail root's filesystem.
type SpaceInfo struct {
	TotalBytes, AvailBytes uint64 // AvailBytes: for unprivileged users
	Inodes, FreeInodes     uint64 // Inodes 0: the filesystem reports none
}

// StatSpace reads SpaceInfo for path.
func StatSpace(path string) (SpaceInfo, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return SpaceInfo{}, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	bs := uint64(st.Frsize)
	if bs == 0 {
		bs = uint64(st.Bsize)
	}
	return SpaceInfo{TotalBytes: st.Blocks * bs, AvailBytes: st.Bavail * bs, Inodes: st.Files, FreeInodes: st.Ffree}, nil
}

// CheckSpace judges free space and inodes: WARN below 10 %, FAIL below
// 2 %, 100 MB or 10,000 inodes.
func CheckSpace(s SpaceInfo) Result {
	pct := func(free, total uint64) float64 {
		if total == 0 {
			return 100
		}
		return 100 * float64(free) / float64(total)
	}
	bp := pct(s.AvailBytes, s.TotalBytes)
	detail := fmt.Sprintf("%s free of %s (%.1f%%)", humanBytes(s.AvailBytes), humanBytes(s.TotalBytes), bp)
	ip := 100.0
	if s.Inodes > 0 {
		ip = pct(s.FreeInodes, s.Inodes)
		detail += fmt.Sprintf(", %s of %s inodes free (%.1f%%)", humanCount(s.FreeInodes), humanCount(s.Inodes), ip)
	} else {
		detail += ", no inode limit reported"
	}
	const fix = "make room on the mail root's filesystem or grow it: when it is full, deliveries fail with a temporary error (ENOSPC) and mail piles up in Postfix's queue"
	switch {
	case bp < failFreePercent:
		return fail("free-space", detail+": nearly full (less than 2% free)", fix)
	case s.AvailBytes < failFreeBytes:
		return fail("free-space", detail+": less than 100 MiB free", fix)
	case s.Inodes > 0 && ip < failFreePercent:
		return fail("free-space", detail+": nearly out of inodes (less than 2% free); every message is a file", fix)
	case s.Inodes > 0 && s.FreeInodes < failFreeInodes:
		return fail("free-space", detail+": fewer than 10,000 inodes free; every message is a file", fix)
	case bp < warnFreePercent || ip < warnFreePercent:
		return warn("free-space", detail+": less than 10% left", fix)
	}
	return ok("free-space", detail)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanCount(n uint64) string {
	switch {
	case n >= 10_000_000:
		return fmt.Sprintf("%.0fM", float64(n)/1e6)
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%.0fk", float64(n)/1e3)
	}
	return strconv.FormatUint(n, 10)
}

// errText is an error without the Go wrapping: for a *PathError the
// operation and the errno text.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Op + ": " + le.Err.Error()
	}
	return err.Error()
}
