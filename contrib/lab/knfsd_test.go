package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKNFSFiler boots the lab's second filer, the Linux kernel NFS server
// in its own VM, and one front end that mounts both filers below one
// local directory, as a site with two volumes does: ganesha's export over
// NFSv4.1 (bound at /srv/mail/ganesha) and the kernel server's over NFSv3
// at /srv/mail/knfsd and over NFSv4.1 at /mnt/k41. A file written through
// each mount is read back (the NFSv3 file through the NFSv4.1 mount of the
// same export); the kernel server is SIGKILLed and booted again, and its
// data must survive: read back through both mounts, a new file written,
// and everything found on the filer's disk afterwards.
func TestKNFSFiler(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	l := newTestLab(t, ctx)
	k, err := l.NewKNFSServer(ctx, KNFSOptions{Populate: func(export string) error {
		return os.WriteFile(filepath.Join(export, "from-host"), []byte("made with the disk\n"), 0o644)
	}})
	if IsMissing(err) {
		t.Fatal(err) // newTestLab would have skipped already: the host can install
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(l.Export, "mailg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.NFS.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v41, _ := MountOptsFor("4.1", "hard")
	v3, _ := MountOptsFor("3", "hard")
	vm := l.NewVM(VMConfig{N: 1, MountOpts: v41, Mounts: []Mount{
		{Source: MountPoint + "/mailg", Point: "/srv/mail/ganesha", Opts: "bind"},
		{Source: k.Source(), Point: "/srv/mail/knfsd", Opts: v3},
		{Source: k.Source(), Point: "/mnt/k41", Opts: v41},
	}})
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	sh := func(cmd string) string {
		t.Helper()
		out, code, err := vm.Exec(ctx, cmd)
		if err != nil || code != 0 {
			t.Fatalf("%s: exit %d, %v: %s", cmd, code, err, out)
		}
		return out
	}
	// The mount table says what each mount is: the test must not pass on
	// a local directory.
	mounts := sh("cat /proc/mounts")
	for _, want := range []string{
		ServerAddr + ":" + l.Export + " /mnt/lab nfs4 ",
		ServerAddr + ":" + l.Export + "/mailg /srv/mail/ganesha nfs4 ",
		k.Source() + " /srv/mail/knfsd nfs ",
		k.Source() + " /mnt/k41 nfs4 ",
	} {
		if !strings.Contains(mounts, want) {
			t.Errorf("no mount %q in:\n%s", want, mounts)
		}
	}
	if got := sh("cat /srv/mail/knfsd/from-host"); got != "made with the disk\n" {
		t.Errorf("the disk's file over NFSv3: %q", got)
	}
	sh("echo ganesha-v41 >/srv/mail/ganesha/a && echo knfsd-v3 >/srv/mail/knfsd/b && echo knfsd-v41 >/mnt/k41/c && sync")
	if got := sh("cat /srv/mail/ganesha/a /mnt/k41/b /srv/mail/knfsd/c"); got != "ganesha-v41\nknfsd-v3\nknfsd-v41\n" {
		t.Errorf("read back: %q", got)
	}

	// The filer crashes and comes back: its clients (hard mounts) wait,
	// then carry on with the data intact.
	k.Kill()
	t0 := time.Now()
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("knfsd SIGKILLed and booted again: serving after %v", time.Since(t0).Round(100*time.Millisecond))
	t1 := time.Now()
	if got := sh("cat /srv/mail/knfsd/b /mnt/k41/c"); got != "knfsd-v3\nknfsd-v41\n" {
		t.Errorf("after the restart: %q", got)
	}
	sh("echo after-v41 >/mnt/k41/d && echo after-v3 >/srv/mail/knfsd/e && sync")
	t.Logf("first reads and writes after the restart took %v (NFSv4 grace included)", time.Since(t1).Round(100*time.Millisecond))

	if err := vm.Poweroff(ctx); err != nil {
		t.Error(err)
	}
	if err := k.Stop(ctx); err != nil {
		t.Error(err)
	}
	dir, err := k.ReadExport(ctx, filepath.Join(l.Dir, "knfsd-read"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"b": "knfsd-v3\n", "c": "knfsd-v41\n", "d": "after-v41\n", "e": "after-v3\n"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("on the filer's disk, %s: %q, %v (want %q)", name, got, err, want)
		}
	}
	if err := l.NFS.Stop(); err != nil {
		t.Error(err)
	}
	if got, err := os.ReadFile(filepath.Join(l.Export, "mailg", "a")); err != nil || string(got) != "ganesha-v41\n" {
		t.Errorf("on ganesha's export, a: %q, %v", got, err)
	}
}
