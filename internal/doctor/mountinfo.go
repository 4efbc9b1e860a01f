package doctor

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultMountInfo is where the kernel describes this process's mounts.
const DefaultMountInfo = "/proc/self/mountinfo"

// Mount is one line of /proc/self/mountinfo (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Paths have the kernel's octal escapes (\040 for a space, \011, \012,
// \134) undone.
type Mount struct {
	ID, Parent int
	Dev        string // major:minor
	Root       string // the mounted directory within the filesystem
	MountPoint string
	// MountOptions are the per-mount options (rw, relatime, sync, ...).
	MountOptions []string
	FSType       string
	Source       string
	// SuperOptions are the filesystem's options; for NFS the ones
	// nfs(5) describes (vers=, hard, acregmin=, lookupcache=, ...).
	SuperOptions []string
}

// Option looks an option up in the filesystem's options, then in the
// per-mount options: for "name=value" it returns value, for a bare flag "".
func (m Mount) Option(name string) (value string, present bool) {
	for _, opts := range [][]string{m.SuperOptions, m.MountOptions} {
		for _, o := range opts {
			if o == name {
				return "", true
			}
			if k, v, ok := strings.Cut(o, "="); ok && k == name {
				return v, true
			}
		}
	}
	return "", false
}

// Has reports whether flag is among the options.
func (m Mount) Has(flag string) bool { _, ok := m.Option(flag); return ok }

// IsNFS reports whether m is an NFS mount (any version).
func (m Mount) IsNFS() bool { return m.FSType == "nfs" || m.FSType == "nfs4" }

// ReadMountInfo reads and parses a mountinfo file.
func ReadMountInfo(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts, err := ParseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return mounts, nil
}

// ParseMountInfo parses the mountinfo format of proc(5).
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		fields := strings.Fields(text)
		// The optional fields end with a lone "-".
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || len(fields) < sep+3 {
			return nil, fmt.Errorf("line %d: not a mountinfo line: %q", line, text)
		}
		id, err1 := strconv.Atoi(fields[0])
		parent, err2 := strconv.Atoi(fields[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %d: bad mount id: %q", line, text)
		}
		m := Mount{
			ID:           id,
			Parent:       parent,
			Dev:          fields[2],
			Root:         unescapeOctal(fields[3]),
			MountPoint:   unescapeOctal(fields[4]),
			MountOptions: strings.Split(fields[5], ","),
			FSType:       unescapeOctal(fields[sep+1]),
			Source:       unescapeOctal(fields[sep+2]),
		}
		if len(fields) > sep+3 {
			m.SuperOptions = strings.Split(fields[sep+3], ",")
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return mounts, nil
}

// unescapeOctal undoes the kernel's mangling of white space and backslashes
// in mountinfo paths (\040, \011, \012, \134).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// FindMount returns the mount containing path: the longest mount point that
// is path or a parent of it. Of several mounts on the same point, the last
// one listed is on top and wins. path should be absolute and free of
// symbolic links (see RealPath).
func FindMount(mounts []Mount, path string) (Mount, bool) {
	path = filepath.Clean(path)
	best, found := Mount{}, false
	for _, m := range mounts {
		mp := filepath.Clean(m.MountPoint)
		if !(path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) {
			continue
		}
		if !found || len(mp) >= len(filepath.Clean(best.MountPoint)) {
			best, found = m, true
		}
	}
	return best, found
}

// RealPath resolves symbolic links in path, as far as it exists: the part
// that does not exist yet is appended unchanged.
func RealPath(path string) string {
	path = filepath.Clean(path)
	rest := ""
	for p := path; ; {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return path
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// NFS attribute cache defaults (nfs(5)), in seconds.
const (
	defACRegMin = 3
	defACRegMax = 60
	defACDirMin = 30
	defACDirMax = 60
)

// networkFS are shared filesystems that are not NFS: nfsdrop may work on
// them, but its design (and these checks) are about NFS.
var networkFS = map[string]bool{
	"cifs": true, "smb3": true, "smbfs": true, "ceph": true, "glusterfs": true,
	"9p": true, "virtiofs": true, "afs": true, "ocfs2": true, "gfs2": true,
	"lustre": true, "beegfs": true, "gpfs": true, "orangefs": true,
}

// CheckFilesystem judges the mount that holds the mail root. found is
// false when no mount matched (an unreadable or fake mountinfo).
func CheckFilesystem(m Mount, found bool, path string) []Result {
	if !found {
		return []Result{warn("filesystem", "no mount in the mount table contains "+path,
			"check that "+path+" exists and that /proc is mounted")}
	}
	if m.IsNFS() {
		return checkNFS(m)
	}
	where := fmt.Sprintf("%s (%s on %s)", m.FSType, m.Source, m.MountPoint)
	if readOnly(m) {
		return []Result{fail("filesystem", where+" is mounted read-only: nothing can be delivered",
			"remount it read-write (mount -o remount,rw "+m.MountPoint+")")}
	}
	if networkFS[m.FSType] || strings.HasPrefix(m.FSType, "fuse") {
		return []Result{warn("filesystem", "shared filesystem "+where+" is not NFS: nfsdrop is built for NFS; the link, fsync and clock checks below show how this one behaves",
			"for a store shared by several machines use NFS (v3 or v4.x, hard mount)")}
	}
	return []Result{ok("filesystem", "local filesystem "+where+": fine for one machine; several machines need a shared NFS mount")}
}

func readOnly(m Mount) bool {
	for _, o := range m.MountOptions {
		if o == "ro" {
			return true
		}
	}
	for _, o := range m.SuperOptions {
		if o == "ro" {
			return true
		}
	}
	return false
}

// checkNFS turns an NFS mount's options into rows: the filesystem (version,
// server, informational options), hard/soft, close-to-open, the attribute
// cache and the lookup cache.
func checkNFS(m Mount) []Result {
	vers, _ := m.Option("vers")
	if vers == "" {
		vers, _ = m.Option("nfsvers")
	}
	if vers == "" && m.FSType == "nfs4" {
		vers = "4"
	}
	if vers == "" {
		vers = "unknown"
	}
	var notes []string
	notes = append(notes, fmt.Sprintf("NFS version %s, %s on %s", vers, m.Source, m.MountPoint))
	if n := versionNote(vers); n != "" {
		notes = append(notes, n)
	}
	if p, ok := m.Option("proto"); ok {
		notes = append(notes, "proto="+p)
	}
	switch ll, _ := m.Option("local_lock"); {
	case m.Has("nolock"):
		notes = append(notes, "nolock (fine: nfsdrop takes no NFS locks; its locks are files made with link())")
	case ll != "" && ll != "none":
		notes = append(notes, "local_lock="+ll+" (fine: nfsdrop takes no NFS locks)")
	default:
		notes = append(notes, "NFS locking available (nfsdrop takes no NFS locks)")
	}
	if hasMountFlag(m, "sync") {
		notes = append(notes, "sync: every write goes to the server at once; nfsdrop fsyncs what it must anyway, so this only costs time")
	} else {
		notes = append(notes, "async writes (nfsdrop fsyncs each message before answering)")
	}
	var rows []Result
	detail := strings.Join(notes, "; ")
	switch {
	case readOnly(m):
		rows = append(rows, fail("filesystem", detail+"; mounted read-only: nothing can be delivered",
			"remount read-write (mount -o remount,rw "+m.MountPoint+") and check the export's rw option on the server"))
	case vers == "2":
		rows = append(rows, warn("filesystem", detail+"; NFSv2 has 32-bit sizes and no exclusive create",
			"mount with vers=3 or vers=4.2"))
	case vers == "4.0":
		rows = append(rows, warn("filesystem", detail+"; NFSv4.0 has no sessions: a call the client sends again after a reconnect (an exclusive OPEN, LINK, RENAME, REMOVE) "+
			"is answered from the server's reply cache only if it still holds it, so it may be carried out twice or answered with an error it did not cause, and every open "+
			"file's state hangs on per-owner sequence numbers that a lost reply can wedge (NFS4ERR_BAD_SEQID); nfsdrop checks the inode after a link or rename, "+
			"but 4.1 makes retransmissions exactly-once",
			"mount with vers=4.1 or vers=4.2 (or vers=3, which costs the filer the fewest calls; docs/nfs.md)"))
	default:
		rows = append(rows, ok("filesystem", detail))
	}

	timeo, _ := m.Option("timeo")
	retrans, _ := m.Option("retrans")
	switch {
	case m.Has("soft") || m.Has("softerr"):
		mode := "soft"
		if m.Has("softerr") {
			mode = "softerr"
		}
		rows = append(rows, fail("nfs-hard", fmt.Sprintf("%s mount (timeo=%s retrans=%s): a call the server does not answer in time fails with EIO instead of waiting; "+
			"a write can be lost after the program was told it succeeded, and a LINK or UNLINK that did happen is reported as failed (duplicated or lost mail); nfs(5) warns that soft timeouts can corrupt data silently", mode, orDefault(timeo), orDefault(retrans)),
			"mount with hard (the default: drop soft/softerr): a stalled server then makes deliveries wait, and Postfix keeps the mail queued"))
	default:
		rows = append(rows, ok("nfs-hard", fmt.Sprintf("hard mount: calls wait for the server (timeo=%s retrans=%s)", orDefault(timeo), orDefault(retrans))))
	}

	if m.Has("nocto") {
		rows = append(rows, fail("nfs-cto", "nocto: opening a file or directory does not revalidate it, so this machine can list a Maildir from its stale cache "+
			"and miss messages other machines delivered or show ones they deleted (POP3 listings are revalidated by opening new/ and cur/, which relies on close-to-open)",
			"remove nocto from the mount options and remount"))
	} else {
		rows = append(rows, ok("nfs-cto", "close-to-open consistency on (POP3 revalidates its cached listings by opening new/ and cur/)"))
	}

	rows = append(rows, checkAttrCache(m))
	rows = append(rows, checkLookupCache(m))
	return rows
}

// versionNote says what the NFS version means for nfsdrop (docs/nfs.md,
// docs/scaling.md): the calls it costs the filer and how retransmissions
// are answered.
func versionNote(vers string) string {
	switch vers {
	case "3":
		return "NFSv3: exclusive create with a verifier, no open state; the fewest NFS calls per delivery and login"
	case "4.1", "4.2":
		return "NFSv" + vers + ": sessions (a retransmitted call is answered from the server's reply cache, exactly once), " +
			"open state and a lease per client; about twice the NFS calls of v3 per delivery (OPEN/CLOSE, more GETATTR and ACCESS): " +
			"each machine needs its own NFSv4 client identity (distinct host names, or nfs4_unique_id)"
	case "4":
		return "NFSv4 (minor version not shown)"
	}
	return ""
}

func orDefault(v string) string {
	if v == "" {
		return "default"
	}
	return v
}

// hasMountFlag looks for a bare flag in the per-mount or filesystem
// options (sync can be in either).
func hasMountFlag(m Mount, flag string) bool {
	for _, o := range append(append([]string{}, m.MountOptions...), m.SuperOptions...) {
		if o == flag {
			return true
		}
	}
	return false
}

// checkAttrCache judges noac and the attribute cache times. The kernel
// shows acregmin/acregmax/acdirmin/acdirmax only when they differ from the
// defaults, and never actimeo (which sets all four); a hand-written line
// may carry actimeo, so it is read too.
func checkAttrCache(m Mount) Result {
	if m.Has("noac") {
		return warn("nfs-attrcache", "noac: attributes are never cached and every write is synchronous: correct, but each stat() and write is a round trip to the server, "+
			"so deliveries and POP3 listings are slower",
			"remove noac: nfsdrop does not need it (it revalidates by opening files and checks the inode after link/rename)")
	}
	vals := map[string]int{"acregmin": defACRegMin, "acregmax": defACRegMax, "acdirmin": defACDirMin, "acdirmax": defACDirMax}
	if v, ok := m.Option("actimeo"); ok {
		if n, err := strconv.Atoi(v); err == nil {
			for k := range vals {
				vals[k] = n
			}
		}
	}
	for _, k := range []string{"acregmin", "acregmax", "acdirmin", "acdirmax"} {
		if v, ok := m.Option(k); ok {
			if n, err := strconv.Atoi(v); err == nil {
				vals[k] = n
			}
		}
	}
	desc := fmt.Sprintf("acregmin=%d acregmax=%d acdirmin=%d acdirmax=%d", vals["acregmin"], vals["acregmax"], vals["acdirmin"], vals["acdirmax"])
	if vals["acregmax"] == 0 && vals["acdirmax"] == 0 {
		return warn("nfs-attrcache", desc+": attribute caching is off, so every stat() is a round trip to the server (correct, but slow)",
			"drop actimeo=0 (or the ac*=0 options); nfsdrop revalidates what it needs by opening files")
	}
	if vals["acregmax"] > defACRegMax || vals["acdirmax"] > defACDirMax {
		long := max(vals["acregmax"], vals["acdirmax"])
		return ok("nfs-attrcache", fmt.Sprintf("%s: long attribute cache: stat() may show changes made by other machines up to %d s late "+
			"(nfsdrop opens what must be current, so this only delays things like noticing a mount marker)", desc, long))
	}
	return ok("nfs-attrcache", desc)
}

// checkLookupCache judges lookupcache. The kernel shows
// lookupcache=pos or lookupcache=none; nothing means all (the default).
func checkLookupCache(m Mount) Result {
	v, _ := m.Option("lookupcache")
	dirmax := defACDirMax
	if s, ok := m.Option("acdirmax"); ok {
		if n, err := strconv.Atoi(s); err == nil {
			dirmax = n
		}
	} else if s, ok := m.Option("actimeo"); ok {
		if n, err := strconv.Atoi(s); err == nil {
			dirmax = n
		}
	}
	switch v {
	case "pos", "positive":
		return ok("nfs-lookupcache", "lookupcache=positive: names found are cached, names not found are looked up again")
	case "none":
		return ok("nfs-lookupcache", "lookupcache=none: every lookup goes to the server (correct; positive would save LOOKUP calls)")
	}
	if m.Has("noac") || dirmax == 0 {
		return ok("nfs-lookupcache", "lookupcache=all, but with attribute caching off names not found are looked up again")
	}
	cur := "lookupcache=all (the default)"
	if v != "" {
		cur = "lookupcache=" + v
	}
	return warn("nfs-lookupcache", fmt.Sprintf("%s: a name this machine looked up and did not find stays \"not found\" until the directory's attributes expire (up to acdirmax=%d s), "+
		"so a Maildir, mount marker or lock another machine has just created can look missing here (creating with O_EXCL or link() still asks the server)", cur, dirmax),
		"mount with lookupcache=positive (costs one LOOKUP per name that is not there)")
}
