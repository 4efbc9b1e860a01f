package doctor

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

func TestCheckSpace(t *testing.T) {
	const G = 1 << 30
	for _, tc := range []struct {
		name string
		in   SpaceInfo
		want Status
	}{
		{"plenty", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 50 * G, Inodes: 1e6, FreeInodes: 9e5}, OK},
		{"9% bytes", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 9 * G, Inodes: 1e6, FreeInodes: 9e5}, WARN},
		{"9% inodes", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 50 * G, Inodes: 1e6, FreeInodes: 9e4}, WARN},
		{"1.5% bytes", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 1.5 * G, Inodes: 1e6, FreeInodes: 9e5}, FAIL},
		{"99 MB", SpaceInfo{TotalBytes: 200 << 20, AvailBytes: 99 << 20, Inodes: 1e6, FreeInodes: 9e5}, FAIL},
		{"9999 inodes", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 50 * G, Inodes: 20000, FreeInodes: 9999}, FAIL},
		{"1% inodes", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 50 * G, Inodes: 1e8, FreeInodes: 1e6}, FAIL},
		{"no inode count", SpaceInfo{TotalBytes: 100 * G, AvailBytes: 50 * G}, OK},
		{"full", SpaceInfo{TotalBytes: 4 << 20, AvailBytes: 0, Inodes: 100, FreeInodes: 90}, FAIL},
	} {
		r := CheckSpace(tc.in)
		if r.Status != tc.want || r.Check != "free-space" {
			t.Errorf("%s: %s %q, want %s", tc.name, r.Status, r.Detail, tc.want)
		}
		if r.Status != OK && r.Fix == "" {
			t.Errorf("%s: no fix", tc.name)
		}
	}
	if d := CheckSpace(SpaceInfo{TotalBytes: 252 << 30, AvailBytes: 75 << 30, Inodes: 16_700_000, FreeInodes: 15_900_000}).Detail; d != "75.0 GiB free of 252.0 GiB (29.8%), 16M of 17M inodes free (95.2%)" {
		t.Errorf("detail %q", d)
	}
}

func TestClock(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	t1 := t0.Add(2 * time.Millisecond)
	for _, tc := range []struct {
		server time.Time
		skew   time.Duration
		want   Status
	}{
		{t0.Add(time.Millisecond), 0, OK},
		{t0, 0, OK},
		{t1.Add(1500 * time.Millisecond), 1500 * time.Millisecond, OK},
		// The POP3 lock and listing cache tolerate any skew now: 30 s is fine.
		{t0.Add(-30 * time.Second), -30 * time.Second, OK},
		{t1.Add(59 * time.Second), 59 * time.Second, OK},
		{t0.Add(-61 * time.Second), -61 * time.Second, WARN},
		{t1.Add(14 * time.Minute), 14 * time.Minute, WARN},
		{t1.Add(16 * time.Minute), 16 * time.Minute, FAIL},
		{t0.Add(-time.Hour), -time.Hour, FAIL},
	} {
		skew := ClockSkew(t0, t1, tc.server)
		if skew != tc.skew {
			t.Errorf("ClockSkew(%v) = %v, want %v", tc.server.Sub(t0), skew, tc.skew)
		}
		r := JudgeClock(skew, t1.Sub(t0), "the file server")
		if r.Status != tc.want {
			t.Errorf("skew %v: %s %q, want %s", skew, r.Status, r.Detail, tc.want)
		}
	}
	if d := JudgeClock(-3*time.Second, time.Millisecond, "the file server").Detail; !strings.Contains(d, "the file server's clock is 3s behind this machine's") {
		t.Errorf("detail %q", d)
	}
	if d := JudgeClock(90*time.Second, time.Millisecond, "the file server").Detail; !strings.Contains(d, "1m30s ahead") {
		t.Errorf("detail %q", d)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 50; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	if got := Percentile(d, 0.5); got != 25*time.Millisecond {
		t.Errorf("median %v", got)
	}
	if got := Percentile(d, 0.99); got != 50*time.Millisecond {
		t.Errorf("p99 %v", got)
	}
	if got := Percentile(d[:1], 0.99); got != time.Millisecond {
		t.Errorf("p99 of one %v", got)
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("empty %v", got)
	}
}

func TestCheckHostname(t *testing.T) {
	for _, tc := range []struct {
		host string
		want Status
	}{
		{"mx1.example.org", OK},
		{"vm", OK},
		{"localhost", WARN},
		{"LOCALHOST.localdomain", WARN},
		{"localhost.example", WARN},
		{"3f2a9c1b7d4e", WARN}, // a container ID
		{"3f2a9c1b7d4e5", OK},  // 13 characters: not Docker's
		{"..", FAIL},
	} {
		r := CheckHostname(tc.host, store.HostPart(tc.host), "")
		if r.Status != tc.want {
			t.Errorf("%q: %s %q, want %s", tc.host, r.Status, r.Detail, tc.want)
		}
	}
	long := strings.Repeat("a", 40) + ".example.org"
	if r := CheckHostname(long, store.HostPart(long), "the system's host name"); r.Status != OK || !strings.Contains(r.Detail, "shortened") {
		t.Errorf("long: %+v", r)
	}
}

func TestReadMachineID(t *testing.T) {
	dir := t.TempDir()
	empty, real, boot := filepath.Join(dir, "empty"), filepath.Join(dir, "real"), filepath.Join(dir, "boot")
	writeFile(t, empty, "\n")
	writeFile(t, real, "0123456789abcdef0123456789abcdef\n")
	writeFile(t, boot, "b-o-o-t\n")
	id, err := ReadMachineID([]string{filepath.Join(dir, "missing"), empty, real}, boot, "h")
	if err != nil || id.ID != "0123456789abcdef0123456789abcdef" || id.Fallback || id.Source != real {
		t.Errorf("real: %+v %v", id, err)
	}
	id, err = ReadMachineID([]string{empty}, boot, "h")
	if err != nil || id.ID != "boot:h:b-o-o-t" || !id.Fallback {
		t.Errorf("fallback: %+v %v", id, err)
	}
	if _, err := ReadMachineID([]string{empty}, filepath.Join(dir, "nope"), "h"); err == nil {
		t.Error("no id at all gave no error")
	}
}

func TestHostClaim(t *testing.T) {
	root := t.TempDir()
	fsys := store.OSFS{}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	a := MachineID{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Source: "/etc/machine-id"}
	b := MachineID{ID: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Source: "/etc/machine-id"}
	claimFile := filepath.Join(root, HostsDir, "mx1")

	r := CheckHostClaim(fsys, root, "mx1", "mx1", a, now)
	if r.Status != OK || !strings.Contains(r.Detail, "claimed host part") {
		t.Fatalf("first claim: %+v", r)
	}
	if got := readFile(t, claimFile); !strings.Contains(got, "machine-id "+a.ID) || !strings.Contains(got, "checked 2025-06-01T12:00:00Z") {
		t.Errorf("claim file %q", got)
	}
	r = CheckHostClaim(fsys, root, "mx1", "mx1", a, now.Add(time.Hour))
	if r.Status != OK || !strings.Contains(r.Detail, "is claimed by this machine") {
		t.Fatalf("same machine: %+v", r)
	}
	if got := readFile(t, claimFile); !strings.Contains(got, "checked 2025-06-01T13:00:00Z") {
		t.Errorf("not refreshed: %q", got)
	}

	// Another machine with the same host part.
	r = CheckHostClaim(fsys, root, "mx1", "mx1", b, now)
	if r.Status != FAIL || !strings.Contains(r.Detail, `two machines share the host part "mx1"`) || !strings.Contains(r.Fix, "set hostname in nfsdrop.toml") {
		t.Fatalf("other machine: %+v", r)
	}
	if got := readFile(t, claimFile); !strings.Contains(got, a.ID) {
		t.Errorf("the other machine's claim was overwritten: %q", got)
	}
	// Another host part is fine, and is listed.
	r = CheckHostClaim(fsys, root, "mx2", "mx2", b, now)
	if r.Status != OK || !strings.Contains(r.Detail, "1 other host parts claimed: mx1") {
		t.Fatalf("mx2: %+v", r)
	}

	// A fallback id cannot tell a reboot from another machine: WARN, and
	// the claim is taken over.
	fb1 := MachineID{ID: "boot:mx1:1111", Source: "hostname+boot_id", Fallback: true}
	fb2 := MachineID{ID: "boot:mx1:2222", Source: "hostname+boot_id", Fallback: true}
	if r := CheckHostClaim(fsys, root, "mx1", "mx1", fb1, now); r.Status != WARN {
		t.Fatalf("fallback vs real: %+v", r)
	}
	if r := CheckHostClaim(fsys, root, "mx1", "mx1", fb1, now); r.Status != OK {
		t.Fatalf("fallback again: %+v", r)
	}
	if r := CheckHostClaim(fsys, root, "mx1", "mx1", fb2, now); r.Status != WARN || !strings.Contains(r.Detail, "before a reboot") {
		t.Fatalf("after a reboot: %+v", r)
	}
	// No temporary files left behind.
	names, _ := os.ReadDir(filepath.Join(root, HostsDir))
	for _, n := range names {
		if strings.HasPrefix(n.Name(), ".tmp.") {
			t.Errorf("left %s", n.Name())
		}
	}
}

func TestHostClaimUnwritable(t *testing.T) {
	root := t.TempDir()
	fsys := failFS{OSFS: store.OSFS{}, mkdir: syscall.EROFS}
	r := CheckHostClaim(fsys, root, "mx1", "mx1", MachineID{ID: "a"}, time.Now())
	if r.Status != WARN || !strings.Contains(r.Detail, "read-only file system") {
		t.Errorf("%+v", r)
	}
}

// failFS is the real filesystem with some calls failing.
type failFS struct {
	store.OSFS
	link, mkdir, sync, touch, symlink error
}

func (f failFS) TouchNow(name string) error {
	if f.touch != nil {
		return &os.PathError{Op: "utimensat", Path: name, Err: f.touch}
	}
	return f.OSFS.TouchNow(name)
}

func (f failFS) Symlink(target, name string) error {
	if f.symlink != nil {
		return &os.LinkError{Op: "symlink", Old: target, New: name, Err: f.symlink}
	}
	return f.OSFS.Symlink(target, name)
}

func (f failFS) Link(a, b string) error {
	if f.link != nil {
		return &os.LinkError{Op: "link", Old: a, New: b, Err: f.link}
	}
	return f.OSFS.Link(a, b)
}

func (f failFS) Mkdir(name string, perm fs.FileMode) error {
	if f.mkdir != nil {
		return &os.PathError{Op: "mkdir", Path: name, Err: f.mkdir}
	}
	return f.OSFS.Mkdir(name, perm)
}

func (f failFS) SyncDir(name string) error {
	if f.sync != nil {
		return &os.PathError{Op: "fsync", Path: name, Err: f.sync}
	}
	return f.OSFS.SyncDir(name)
}

func TestCheckSymlinkLock(t *testing.T) {
	dir := t.TempDir()
	if r := CheckSymlinkLock(store.OSFS{}, dir); r.Status != OK {
		t.Fatalf("%+v", r)
	}
	for _, tc := range []struct {
		name string
		fs   failFS
		want string
	}{
		{"filer refuses a symlink's times", failFS{touch: syscall.EPERM}, "setting the symlink's times"},
		{"no symlinks", failFS{symlink: syscall.EPERM}, "symlink: "},
	} {
		r := CheckSymlinkLock(tc.fs, dir)
		if r.Status != FAIL || !strings.Contains(r.Detail, tc.want) {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("left %d files", len(names))
	}
}

func TestCheckLinkRename(t *testing.T) {
	dir := t.TempDir()
	if r := CheckLinkRename(store.OSFS{}, dir); r.Status != OK {
		t.Fatalf("%+v", r)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("left %d files", len(names))
	}
	r := CheckLinkRename(failFS{link: syscall.EPERM}, dir)
	if r.Status != FAIL || !strings.Contains(r.Detail, "hard links are not supported") || !strings.Contains(r.Detail, "fall back to rename()") {
		t.Errorf("EPERM: %+v", r)
	}
	r = CheckLinkRename(failFS{link: syscall.EIO}, dir)
	if r.Status != FAIL || !strings.Contains(r.Detail, "input/output error") {
		t.Errorf("EIO: %+v", r)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("left %d files", len(names))
	}
}

func TestCheckFsync(t *testing.T) {
	dir := t.TempDir()
	r := CheckFsync(store.OSFS{}, dir, 5)
	if r.Status == FAIL || !strings.Contains(r.Detail, "5 cycles") || !strings.Contains(r.Detail, "median") || !strings.Contains(r.Detail, "p99") {
		t.Fatalf("%+v", r)
	}
	// Without hard links the cycle renames, as the store does.
	if r := CheckFsync(failFS{link: syscall.EPERM}, dir, 2); r.Status == FAIL {
		t.Errorf("EPERM: %+v", r)
	}
	r = CheckFsync(failFS{sync: syscall.EIO}, dir, 3)
	if r.Status != FAIL || !strings.Contains(r.Detail, "sample 1 of 3: fsync: input/output error") {
		t.Errorf("EIO: %+v", r)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("left %d files", len(names))
	}
}

func TestCheckClockLocal(t *testing.T) {
	dir := t.TempDir()
	r := CheckClock(store.OSFS{}, dir, time.Now, false)
	if r.Status != OK || !strings.Contains(r.Detail, "the filesystem's clock") {
		t.Errorf("%+v", r)
	}
	// A clock 20 min fast here is a server 20 min behind.
	r = CheckClock(store.OSFS{}, dir, func() time.Time { return time.Now().Add(20 * time.Minute) }, true)
	if r.Status != FAIL || !strings.Contains(r.Detail, "behind") {
		t.Errorf("skewed: %+v", r)
	}
}

func TestCheckMarkerAndPermissions(t *testing.T) {
	root := t.TempDir()
	if r := CheckMarker(root, ".mounted", true); r.Status != FAIL || !strings.Contains(r.Fix, "touch "+filepath.Join(root, ".mounted")) {
		t.Errorf("missing: %+v", r)
	}
	writeFile(t, filepath.Join(root, ".mounted"), "")
	if r := CheckMarker(root, ".mounted", true); r.Status != OK {
		t.Errorf("present: %+v", r)
	}
	if r := CheckMarker(root, "", true); r.Status != WARN {
		t.Errorf("off on NFS: %+v", r)
	}
	if r := CheckMarker(root, "", false); r.Status != OK {
		t.Errorf("off locally: %+v", r)
	}

	if err := os.Chmod(root, 0o777); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if r := CheckPermissions(root, fi, err, -1); r.Status != WARN || !strings.Contains(r.Detail, "world-writable") {
		t.Errorf("0777: %+v", r)
	}
	os.Chmod(root, 0o755)
	fi, err = os.Stat(root)
	if r := CheckPermissions(root, fi, err, -1); r.Status != OK || !strings.Contains(r.Detail, "drwxr-xr-x, owner ") {
		t.Errorf("0755: %+v", r)
	}
	if r := CheckPermissions(root, fi, err, 65534); r.Status != WARN || !strings.Contains(r.Detail, "squashes root") {
		t.Errorf("squashed: %+v", r)
	}
	if r := CheckPermissions(root, fi, err, UnmappedOwner); r.Status != FAIL || !strings.Contains(r.Detail, "could not map the owner name") ||
		!strings.Contains(r.Fix, "Only_Numeric_Owners") {
		t.Errorf("NFSv4 owner not mapped: %+v", r)
	}
	_, err = os.Stat(filepath.Join(root, "missing"))
	if r := CheckPermissions(filepath.Join(root, "missing"), nil, err, -1); r.Status != FAIL || !strings.Contains(r.Detail, "does not exist") {
		t.Errorf("missing: %+v", r)
	}
}

// fakeRoot makes a mail root with a marker and a mountinfo file that says
// it is the NFS mount described by opts.
func fakeRoot(t *testing.T, superOpts string, marker bool) (root, mountinfo string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "mail store") // a space: escaped as \040 in mountinfo
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if marker {
		writeFile(t, filepath.Join(root, ".nfsdrop-mounted"), "")
	}
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	mountinfo = filepath.Join(dir, "mountinfo")
	writeFile(t, mountinfo, localRoot+"\n"+
		"90 27 0:90 / "+strings.ReplaceAll(real, " ", `\040`)+" rw,relatime shared:40 - nfs4 fs1:/mail "+superOpts+"\n")
	return root, mountinfo
}

func runFake(t *testing.T, root, mountinfo string) *Report {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "machine-id"), "cafecafecafecafecafecafecafecafe\n")
	return Run(Options{
		MailRoot:       root,
		MountMarker:    ".nfsdrop-mounted",
		Hostname:       "mx1.example.org",
		MountInfo:      mountinfo,
		FsyncSamples:   3,
		MachineIDFiles: []string{filepath.Join(dir, "machine-id")},
	})
}

func TestRunFakeNFS(t *testing.T) {
	root, mi := fakeRoot(t, "rw,vers=4.2,hard,proto=tcp,timeo=600,retrans=2,sec=sys,lookupcache=pos,local_lock=none", true)
	rep := runFake(t, root, mi)
	want := []string{"filesystem", "nfs-hard", "nfs-cto", "nfs-attrcache", "nfs-lookupcache", "mount-marker", "permissions",
		"free-space", "link-rename", "symlink-lock", "fsync", "clock", "hostname", "host-claim"}
	var got []string
	for _, c := range rep.Checks {
		got = append(got, c.Check)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("checks %v\nwant %v", got, want)
	}
	for _, c := range rep.Checks {
		if c.Status == FAIL {
			t.Errorf("%+v", c)
		}
	}
	if r, _ := rep.Find("filesystem"); !strings.Contains(r.Detail, "NFS version 4.2, fs1:/mail") {
		t.Errorf("filesystem %+v", r)
	}
	if r, _ := rep.Find("clock"); !strings.Contains(r.Detail, "the file server's clock") {
		t.Errorf("clock %+v", r)
	}
	// The scratch directory is gone; the claim stays.
	names, _ := os.ReadDir(root)
	var left []string
	for _, n := range names {
		left = append(left, n.Name())
	}
	if strings.Join(left, " ") != ".nfsdrop-hosts .nfsdrop-mounted" {
		t.Errorf("mail root holds %v", left)
	}

	root, mi = fakeRoot(t, "rw,vers=4.2,soft,nocto,proto=tcp", true)
	rep = runFake(t, root, mi)
	if rep.Status != FAIL || statuses(rep.Checks)["nfs-hard"] != FAIL || statuses(rep.Checks)["nfs-cto"] != FAIL {
		t.Errorf("soft, nocto: %+v", rep.Checks)
	}
}

func TestRunWithoutMarker(t *testing.T) {
	root, mi := fakeRoot(t, "rw,vers=3,hard,lookupcache=pos", false)
	rep := runFake(t, root, mi)
	st := statuses(rep.Checks)
	if st["mount-marker"] != FAIL || st["link-rename"] != WARN || st["fsync"] != WARN || st["host-claim"] != WARN {
		t.Errorf("%+v", rep.Checks)
	}
	if r, _ := rep.Find("link-rename"); !strings.Contains(r.Detail, "not run: the mount marker is missing") {
		t.Errorf("%+v", r)
	}
	// Nothing was written into what may be the bare mount point.
	if names, _ := os.ReadDir(root); len(names) != 0 {
		t.Errorf("wrote %d entries", len(names))
	}
}

func TestRunMissingRoot(t *testing.T) {
	_, mi := fakeRoot(t, "rw,vers=3,hard", true)
	rep := runFake(t, filepath.Join(t.TempDir(), "nope"), mi)
	st := statuses(rep.Checks)
	if st["permissions"] != FAIL || st["link-rename"] != FAIL || st["fsync"] != FAIL || st["free-space"] != FAIL {
		t.Errorf("%+v", rep.Checks)
	}
}

func TestReportOutput(t *testing.T) {
	rep := &Report{MailRoot: "/srv/mail", HostPart: "mx1"}
	rep.add(ok("filesystem", "local"), warn("nfs-lookupcache", "all", "use positive"), fail("nfs-hard", "soft\tmount", "mount hard"))
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `mail root /srv/mail, host part mx1

CHECK            STATUS  DETAIL
filesystem       OK      local
nfs-lookupcache  WARN    all
                         fix: use positive
nfs-hard         FAIL    soft mount
                         fix: mount hard

FAIL: 1 failed, 1 warnings, 1 ok
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Status != FAIL || len(back.Checks) != 3 || back.Checks[1].Status != WARN || back.Checks[0].Fix != "" || back.Checks[2].Fix != "mount hard" {
		t.Errorf("JSON round trip: %+v\n%s", back, b.String())
	}
	if !strings.Contains(b.String(), `"status": "WARN"`) {
		t.Errorf("JSON: %s", b.String())
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}
