package doctor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

// The probes below write into a scratch directory under the mail root, with
// the store's filesystem interface (store.FS), so that they make the calls
// the store makes, and tests can make them meet a filesystem without hard
// links.

// ScratchName is the scratch directory's name under the mail root.
func ScratchName(hostPart string, pid int) string {
	return ".nfsdrop-doctor-" + fileName(hostPart) + "-" + strconv.Itoa(pid)
}

// linkUnsupported reports whether a link(2) error means "this filesystem
// has no hard links" (EPERM is what Linux answers, e.g. on vfat).
func linkUnsupported(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP)
}

// CheckLinkRename checks, in dir, what delivery and the POP3 lock rely on:
// O_EXCL creation, link() making a second name for the same inode (link
// count 2), link() onto an existing name failing with EEXIST, rename(),
// and rename() of a missing name failing with ENOENT.
func CheckLinkRename(fsys store.FS, dir string) Result {
	const name = "link-rename"
	const fix = "the mail root must allow creating, linking and renaming files: check the mount (rw), the export and the permissions"
	a, b, c, d := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c"), filepath.Join(dir, "d")
	defer func() {
		for _, p := range []string{a, b, c, d} {
			fsys.Remove(p)
		}
	}()
	ai, err := createFile(fsys, a, []byte("nfsdrop doctor\n"))
	if err != nil {
		return fail(name, "create with O_EXCL: "+errText(err), fix)
	}
	if f, err := fsys.OpenFile(a, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
		return fail(name, "a second O_EXCL create of the same name succeeded: the filesystem does not honour O_EXCL",
			"use NFSv3 or later (exclusive create) and a server that implements it")
	} else if !errors.Is(err, syscall.EEXIST) {
		return fail(name, "a second O_EXCL create gave "+errText(err)+", expected EEXIST", fix)
	}
	if err := fsys.Link(a, b); err != nil {
		if linkUnsupported(err) {
			return fail(name, "hard links are not supported (link: "+errText(err)+"): deliveries fall back to rename() (one copy per recipient instead of one inode), "+
				"and a POP3 session lock renamed aside by mistake during a takeover cannot be put back (link())",
				"put the mail root on a filesystem with hard links (an NFS export of a POSIX filesystem)")
		}
		return fail(name, "link: "+errText(err), fix)
	}
	bi, err := fsys.Lstat(b)
	if err != nil {
		return fail(name, "stat of the new link: "+errText(err), fix)
	}
	if !bi.SameFile(ai) {
		return fail(name, "link() made a name for another inode than its source", "check the file server: link() is broken")
	}
	ai2, err := fsys.Lstat(a)
	if err != nil {
		return fail(name, "stat of the link's source: "+errText(err), fix)
	}
	if ai2.Nlink != 2 || bi.Nlink != 2 {
		return fail(name, fmt.Sprintf("link count after link() is %d (source %d), expected 2: the store's check after a retransmitted LINK would misjudge it", bi.Nlink, ai2.Nlink),
			"check the file server's link() and the mount's attribute caching")
	}
	if _, err := createFile(fsys, c, []byte("other\n")); err != nil {
		return fail(name, "create: "+errText(err), fix)
	}
	err = fsys.Link(c, b)
	if err == nil {
		return fail(name, "link() onto an existing name succeeded: two deliveries could publish the same name",
			"the filesystem must answer EEXIST: use a POSIX filesystem over NFS")
	}
	if !errors.Is(err, syscall.EEXIST) {
		return fail(name, "link() onto an existing name gave "+errText(err)+", expected EEXIST", fix)
	}
	if bi, err := fsys.Lstat(b); err != nil || !bi.SameFile(ai) {
		return fail(name, "a failed link() changed its target", "check the file server: link() is broken")
	}
	if err := fsys.Rename(b, d); err != nil {
		return fail(name, "rename: "+errText(err), fix)
	}
	if di, err := fsys.Lstat(d); err != nil || !di.SameFile(ai) {
		return fail(name, "rename() did not move the inode to the new name", "check the file server: rename() is broken")
	}
	if _, err := fsys.Lstat(b); !errors.Is(err, syscall.ENOENT) {
		return fail(name, "the old name is still there after rename()", "check the file server: rename() is broken")
	}
	err = fsys.Rename(b, filepath.Join(dir, "e"))
	if err == nil {
		return fail(name, "rename() of a missing name succeeded", "check the file server: rename() is broken")
	}
	if !errors.Is(err, syscall.ENOENT) {
		return fail(name, "rename() of a missing name gave "+errText(err)+", expected ENOENT", fix)
	}
	return ok(name, "O_EXCL create, link() (same inode, 2 links), EEXIST onto an existing name, rename(), ENOENT for a missing source: all as the store expects")
}

// createFile makes path with O_EXCL, writes data, fsyncs and closes it,
// and returns its identity.
func createFile(fsys store.FS, path string, data []byte) (store.Info, error) {
	f, err := fsys.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return store.Info{}, err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	info, serr := f.Stat()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = serr
	}
	if werr != nil {
		fsys.Remove(path)
		return store.Info{}, werr
	}
	return info, nil
}

// SlowFsync is the p99 above which the fsync check warns.
const SlowFsync = 100 * time.Millisecond

// CheckSymlinkLock checks, in dir, what the POP3 session lock relies on:
// the lock is a symlink whose target is the session's token (one SYMLINK
// call), made atomically or refused with EEXIST, read with readlink, and
// kept fresh by setting the symlink's own times to the file server's "now"
// (utimensat with AT_SYMLINK_NOFOLLOW, sent as a SETATTR of the link).
// A file server that refuses the last one would let every live POP3
// session's lock look stale after pop3.lock_stale and be taken over.
func CheckSymlinkLock(fsys store.FS, dir string) Result {
	const name = "symlink-lock"
	const fix = "the POP3 session lock needs symlinks whose own times can be set on the mail root: use an NFS export of a POSIX filesystem (Linux nfsd, nfs-ganesha with FSAL_VFS, a NAS with UNIX semantics)"
	const token = "nfsdrop-doctor-token"
	p := filepath.Join(dir, "lock")
	defer fsys.Remove(p)
	if err := fsys.Symlink(token, p); err != nil {
		return fail(name, "symlink: "+errText(err), fix)
	}
	if err := fsys.Symlink(token, p); !errors.Is(err, syscall.EEXIST) {
		return fail(name, fmt.Sprintf("a second symlink of the same name gave %s, expected EEXIST", errText(err)), fix)
	}
	if got, err := fsys.Readlink(p); err != nil || got != token {
		return fail(name, fmt.Sprintf("readlink gave %q, %s", got, errText(err)), fix)
	}
	before, err := fsys.LstatFresh(p)
	if err != nil {
		return fail(name, "statx of the symlink: "+errText(err), fix)
	}
	if err := fsys.TouchNow(p); err != nil {
		return fail(name, "setting the symlink's times (utimensat, AT_SYMLINK_NOFOLLOW): "+errText(err), fix)
	}
	after, err := fsys.LstatFresh(p)
	if err != nil {
		return fail(name, "statx of the symlink after setting its times: "+errText(err), fix)
	}
	if after.ModTime.Before(before.ModTime) {
		return fail(name, fmt.Sprintf("the symlink's time went back from %s to %s when set to the server's now", before.ModTime, after.ModTime), fix)
	}
	return ok(name, "symlink made atomically (EEXIST on a second), read back, its own times set to the server's now")
}

// CheckFsync times n delivery-like cycles in dir: create, write 2 KB,
// fsync, close, link, fsync the directory, unlink both names.
func CheckFsync(fsys store.FS, dir string, n int) Result {
	const name = "fsync"
	if n < 1 {
		return warn(name, "not measured (no samples asked for)", "run with --fsync-samples 50")
	}
	data := make([]byte, 2048)
	for i := range data {
		data[i] = 'x'
	}
	data[len(data)-1] = '\n'
	times := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		src := filepath.Join(dir, "f"+strconv.Itoa(i))
		dst := filepath.Join(dir, "l"+strconv.Itoa(i))
		start := time.Now()
		_, err := createFile(fsys, src, data)
		if err == nil {
			err = fsys.Link(src, dst)
			if linkUnsupported(err) {
				err = fsys.Rename(src, dst)
			}
		}
		if err == nil {
			err = fsys.SyncDir(dir)
		}
		if err == nil {
			err = fsys.Remove(src)
			if errors.Is(err, syscall.ENOENT) {
				err = nil
			}
		}
		if err == nil {
			err = fsys.Remove(dst)
		}
		if err != nil {
			fsys.Remove(src)
			fsys.Remove(dst)
			return fail(name, fmt.Sprintf("sample %d of %d: %s: every delivery would fail the same way", i+1, n, errText(err)),
				"the mail root must accept writes and fsync: check the mount (rw), free space and the server's logs")
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	med, p99 := Percentile(times, 0.5), Percentile(times, 0.99)
	detail := fmt.Sprintf("%d cycles of create, write 2 KB, fsync, link, fsync dir, unlink: median %s, p99 %s", n, ms(med), ms(p99))
	if p99 > SlowFsync {
		return warn(name, detail+": slow (over 100 ms); each delivery waits for two commits on the server",
			"check the server's disks (a write cache protected by battery or NVRAM), the network, and the mount (sync and noac make it slower)")
	}
	return ok(name, detail)
}

// Percentile returns the q-quantile (0 < q <= 1) of sorted durations, by
// the nearest-rank method.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q*float64(len(sorted)) + 0.999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) string {
	prec := 2
	if d < time.Millisecond {
		prec = 3
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', prec, 64) + " ms"
}

// Clock skew thresholds. The POP3 lock and the listing cache judge ages
// on the file server's clock only (a lock's age is measured against the
// mtime of a file the session has just written), so they tolerate any
// skew. What still compares this machine's clock with file times: the
// one-minute trust in a maildirsize recount (skew costs extra recounts and
// temporary 452s, never a wrong bounce), the tmp/ sweeper (36 hours), and
// the order of messages delivered by different machines (Maildir names
// start with the local time).
const (
	// WarnSkew: messages from different machines may be listed out of
	// order, and quota recounts are no longer reused across machines.
	WarnSkew = time.Minute
	// FailSkew: clocks this far apart mean time service is broken; the
	// listing order across machines is visibly wrong.
	FailSkew = 15 * time.Minute
)

// CheckClock compares the file server's clock with this machine's: it sets
// a file's times to "now" the way the POP3 lock refresh does (utimensat UTIME_NOW,
// which NFS sends as SET_TO_SERVER_TIME, so the server's clock sets them)
// between two readings of the local clock. Of three tries, the one with the
// shortest round trip counts.
// nfs says whether the times come from a file server (for the wording).
func CheckClock(fsys store.FS, dir string, now func() time.Time, nfs bool) Result {
	const name = "clock"
	p := filepath.Join(dir, "clock")
	defer fsys.Remove(p)
	if _, err := createFile(fsys, p, nil); err != nil {
		return fail(name, "cannot create a file to read the server's time: "+errText(err),
			"the mail root must accept writes: check the mount (rw) and the permissions")
	}
	best, bestRTT := time.Duration(0), time.Duration(-1)
	for range 3 {
		before := now()
		err := fsys.TouchNow(p)
		after := now()
		if err != nil {
			return fail(name, "utimensat(UTIME_NOW): "+errText(err), "the POP3 lock refreshes its time this way: check the mount and the permissions")
		}
		info, err := fsys.Lstat(p)
		if err != nil {
			return fail(name, "stat: "+errText(err), "check the mount")
		}
		if rtt := after.Sub(before); bestRTT < 0 || rtt < bestRTT {
			best, bestRTT = ClockSkew(before, after, info.ModTime), rtt
		}
	}
	server := "the file server"
	if !nfs {
		server = "the filesystem"
	}
	return JudgeClock(best, bestRTT, server)
}

// ClockSkew is how far the server's time lies outside [before, after]:
// positive when the server is ahead, negative when behind, 0 inside.
func ClockSkew(before, after, server time.Time) time.Duration {
	switch {
	case server.Before(before):
		return server.Sub(before)
	case server.After(after):
		return server.Sub(after)
	}
	return 0
}

// JudgeClock turns a measured skew into a Result: WARN beyond WarnSkew
// (1 min), FAIL beyond FailSkew (15 min). server names whose clock set the
// file's time.
func JudgeClock(skew, rtt time.Duration, server string) Result {
	const name = "clock"
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	var detail string
	switch {
	case skew > 0:
		detail = fmt.Sprintf("%s's clock is %s ahead of this machine's", server, roundSkew(abs))
	case skew < 0:
		detail = fmt.Sprintf("%s's clock is %s behind this machine's", server, roundSkew(abs))
	default:
		detail = server + "'s clock agrees with this machine's"
	}
	detail += fmt.Sprintf(" (a file's time set to %s's \"now\", round trip %s)", server, ms(rtt))
	const fix = "run NTP (chrony or systemd-timesyncd) on this machine and on the file server: the POP3 lock and listing cache judge ages on the server's clock and do not care, but quota recounts and the tmp/ sweeper compare file times set by the server with this machine's clock, and Maildir names (which order the messages) carry this machine's time"
	switch {
	case abs > FailSkew:
		return fail(name, detail+": more than 15 min, so messages from different machines are listed out of order, quota recounts are never reused and tmp/ files are swept at the wrong age", fix)
	case abs > WarnSkew:
		return warn(name, detail+": more than 1 min, so messages delivered by different machines may be listed out of order and quota recounts are not reused", fix)
	}
	return ok(name, detail)
}

func roundSkew(d time.Duration) string {
	if d < time.Second {
		return ms(d)
	}
	return d.Round(time.Millisecond).String()
}
