package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nfsdrop/nfsdrop/internal/doctor"
	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// doctorEnv writes a configuration for a mail root (created, with its
// mount marker unless noMarker) and returns the config path and the root.
func doctorEnv(t *testing.T, root string, noMarker bool) (cfg string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if !noMarker {
		if err := os.WriteFile(filepath.Join(root, ".nfsdrop-mounted"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg = filepath.Join(t.TempDir(), "nfsdrop.toml")
	conf := fmt.Sprintf("hostname = \"doctor-test\"\n\n[store]\nmail_root = %q\nmount_marker = \".nfsdrop-mounted\"\n", root)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runDoctor runs "nfsdrop doctor" in-process with few fsync samples.
func runDoctor(t *testing.T, cfg string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	argv := append([]string{"nfsdrop", "doctor", "--config", cfg, "--fsync-samples", "5"}, args...)
	code = run(argv, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// doctorRows parses the JSON report into check name -> result.
func doctorRows(t *testing.T, stdout string) map[string]doctor.Result {
	t.Helper()
	var rep doctor.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not a JSON report: %v\n%s", err, stdout)
	}
	rows := map[string]doctor.Result{}
	for _, c := range rep.Checks {
		rows[c.Check] = c
	}
	return rows
}

func wantStatus(t *testing.T, rows map[string]doctor.Result, check string, want doctor.Status) {
	t.Helper()
	r, ok := rows[check]
	if !ok {
		t.Errorf("no %s row", check)
		return
	}
	if r.Status != want {
		t.Errorf("%s = %s (%s), want %s", check, r.Status, r.Detail, want)
	}
}

// mountTmpfs mounts a tmpfs on dir until the test ends.
func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	testenv.RequireRoot(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("umount %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

func TestDoctorHealthyLocalRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	cfg := doctorEnv(t, root, false)
	code, out, errOut := runDoctor(t, cfg)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if !testenv.Contains(out, "CHECK", "STATUS", "DETAIL", "mount-marker", "link-rename", "fsync", "clock", "host-claim",
		"mail root "+root+", host part doctor-test") {
		t.Errorf("table:\n%s", out)
	}
	code, out, _ = runDoctor(t, cfg, "--json")
	if code != 0 {
		t.Fatalf("--json: exit %d\n%s", code, out)
	}
	rows := doctorRows(t, out)
	for _, c := range []string{"mount-marker", "permissions", "link-rename", "clock", "hostname", "host-claim"} {
		wantStatus(t, rows, c, doctor.OK)
	}
	if r := rows["filesystem"]; r.Status != doctor.OK || !strings.Contains(r.Detail, "fine for one machine") {
		t.Errorf("filesystem: %+v (this test wants a local filesystem under %s)", r, os.TempDir())
	}
	// Only the claim and the marker are left in the mail root.
	names, _ := os.ReadDir(root)
	if len(names) != 2 {
		t.Errorf("mail root holds %d entries", len(names))
	}
	claim, err := os.ReadFile(filepath.Join(root, ".nfsdrop-hosts", "doctor-test"))
	if err != nil || !strings.HasPrefix(string(claim), "machine-id ") {
		t.Errorf("claim %q %v", claim, err)
	}
}

func TestDoctorNoMarker(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	cfg := doctorEnv(t, root, true)
	code, out, errOut := runDoctor(t, cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "doctor: 1 check(s) failed") {
		t.Errorf("stderr %q", errOut)
	}
	if !testenv.Contains(out, "mount-marker", "FAIL", "fix: mount the NFS export on "+root) {
		t.Errorf("table:\n%s", out)
	}
	_, out, _ = runDoctor(t, cfg, "--json")
	rows := doctorRows(t, out)
	wantStatus(t, rows, "mount-marker", doctor.FAIL)
	wantStatus(t, rows, "link-rename", doctor.WARN) // not run
	if names, _ := os.ReadDir(root); len(names) != 0 {
		t.Errorf("wrote into a root without its marker: %d entries", len(names))
	}
}

func TestDoctorReadOnlyRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	mountTmpfs(t, root, "size=1g,mode=755")
	cfg := doctorEnv(t, root, false)
	if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runDoctor(t, cfg, "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	rows := doctorRows(t, out)
	wantStatus(t, rows, "filesystem", doctor.FAIL)
	wantStatus(t, rows, "mount-marker", doctor.OK)
	wantStatus(t, rows, "free-space", doctor.OK)
	wantStatus(t, rows, "link-rename", doctor.FAIL)
	wantStatus(t, rows, "fsync", doctor.FAIL)
	if r := rows["link-rename"]; !strings.Contains(r.Detail, "read-only file system") {
		t.Errorf("link-rename: %+v", r)
	}
}

func TestDoctorFullTmpfs(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	mountTmpfs(t, root, "size=4m,mode=755")
	cfg := doctorEnv(t, root, false)
	f, err := os.Create(filepath.Join(root, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	code, out, errOut := runDoctor(t, cfg, "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	rows := doctorRows(t, out)
	wantStatus(t, rows, "free-space", doctor.FAIL)
	if r := rows["free-space"]; !strings.Contains(r.Detail, "0 B free of 4.0 MiB (0.0%)") {
		t.Errorf("free-space: %+v", r)
	}
}

func TestDoctorFakeNFSSoftMount(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	cfg := doctorEnv(t, root, false)
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	mi := filepath.Join(t.TempDir(), "mountinfo")
	line := "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
		"90 27 0:90 / " + real + " rw,relatime shared:40 - nfs4 filer:/mail rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,soft,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1\n"
	if err := os.WriteFile(mi, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runDoctor(t, cfg, "--mountinfo", mi)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	if !testenv.Contains(out, "nfs-hard", "FAIL", "soft mount", "fix: mount with hard", "nfs-lookupcache", "WARN") {
		t.Errorf("table:\n%s", out)
	}
	_, out, _ = runDoctor(t, cfg, "--mountinfo", mi, "--json")
	rows := doctorRows(t, out)
	wantStatus(t, rows, "filesystem", doctor.OK)
	wantStatus(t, rows, "nfs-hard", doctor.FAIL)
	wantStatus(t, rows, "nfs-cto", doctor.OK)
	wantStatus(t, rows, "nfs-lookupcache", doctor.WARN)
	wantStatus(t, rows, "link-rename", doctor.OK)
	if r := rows["filesystem"]; !strings.Contains(r.Detail, "NFS version 4.2, filer:/mail on "+real) {
		t.Errorf("filesystem: %+v", r)
	}
}

func TestDoctorUsage(t *testing.T) {
	cfg := doctorEnv(t, filepath.Join(t.TempDir(), "mail"), false)
	if code, _, errOut := runDoctor(t, cfg, "--fsync-samples", "0"); code != exUsage {
		t.Errorf("--fsync-samples 0: exit %d %s", code, errOut)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"nfsdrop", "doctor", "--config", filepath.Join(t.TempDir(), "missing.toml")}, strings.NewReader(""), &out, &errb); code != exConfig {
		t.Errorf("missing config: exit %d %s", code, errb.String())
	}
	out.Reset()
	if code := run([]string{"nfsdrop", "doctor", "--help"}, strings.NewReader(""), &out, &errb); code != 0 ||
		!testenv.Contains(out.String(), ".nfsdrop-hosts/HOSTPART", "--mountinfo", "--fsync-samples", "--json") {
		t.Errorf("help: %d\n%s", code, out.String())
	}
}

// TestDoctorVolumes: with [[store.volumes]] the doctor checks each volume
// on its own: a volume without its marker fails, the other passes that
// check, and the report names both.
func TestDoctorVolumes(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"f1", "f2"} {
		if err := os.MkdirAll(filepath.Join(root, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "f1", ".m1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "nfsdrop.toml")
	conf := fmt.Sprintf("hostname = \"doctor-test\"\n\n[store]\nmail_root = %q\n\n[[store.volumes]]\nname = \"f1\"\npath = %q\nmount_marker = \".m1\"\n\n"+
		"[[store.volumes]]\nname = \"f2\"\npath = %q\nmount_marker = \".m2\"\n", root, filepath.Join(root, "f1"), filepath.Join(root, "f2"))
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runDoctor(t, cfg, "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (f2's marker is missing)\n%s", code, stderr)
	}
	var rep doctor.VolumesReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not a JSON report: %v\n%s", err, stdout)
	}
	if len(rep.Volumes) != 2 || rep.Volumes[0].Volume != "f1" || rep.Volumes[1].Volume != "f2" {
		t.Fatalf("volumes in the report: %+v", rep.Volumes)
	}
	for i, want := range []doctor.Status{doctor.OK, doctor.FAIL} {
		if m, ok := rep.Volumes[i].Find("mount-marker"); !ok || m.Status != want {
			t.Errorf("volume %s: mount-marker %+v, want %s", rep.Volumes[i].Volume, m, want)
		}
	}
	_, text, _ := runDoctor(t, cfg)
	if !strings.Contains(text, "== volume f1") || !strings.Contains(text, "== volume f2") {
		t.Errorf("text report lacks the volume headings:\n%s", text)
	}
}
