package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// KNFSAddr is the kernel NFS server VM's address on the lab's bridge
// (.5 is the client namespace, .9 ganesha, .10+N the front ends).
const KNFSAddr = "127.77.0.8"

// KNFSExport is the exported directory inside the filer VM: the root of
// the ext4 disk is mounted at /srv. With no fsid=0 export, mountd builds
// the NFSv4 pseudo root from the export, so KNFSAddr:KNFSExport mounts on
// NFSv3 and NFSv4.x alike.
const KNFSExport = "/srv/export"

// knfsModules are the filer VM's kernel modules: the network card and
// random number generator, the disk, ext4 and the kernel NFS server
// (modprobe adds sunrpc, lockd, grace, auth_rpcgss, ... in load order).
var knfsModules = []string{"virtio_pci", "virtio_net", "virtio_rng", "virtio_blk", "ext4", "nfsd"}

// knfsPrograms are the user-space tools of Debian's nfs-kernel-server (and
// rpcbind, for NFSv3's MOUNT protocol and NLM registration) copied from the
// host into the filer's initramfs with their shared libraries.
var knfsPrograms = []string{"rpc.nfsd", "exportfs", "rpc.mountd", "rpcbind"}

// KNFSOptions configures the kernel NFS server VM.
type KNFSOptions struct {
	// DiskMB is the size of the ext4 disk holding the export (default 512).
	DiskMB int
	// Lease is the NFSv4 lease and grace time (default 15 s; the kernel
	// takes no less than 10 s). The defaults of 90 s would stall every
	// NFSv4 client for 90 s after a restart.
	Lease time.Duration
	// Threads is the number of nfsd threads (default 8).
	Threads int
	// MemMB is the VM's memory (default 384).
	MemMB int
	// Populate, when set, fills the export (a host directory) before the
	// disk image is made from it.
	Populate func(export string) error
}

// KNFSServer is the second filer of the lab, of another kind than
// ganesha: the Linux kernel NFS server (nfsd) in its own qemu VM at
// KNFSAddr, exporting KNFSExport from an ext4 disk image over NFSv3 and
// NFSv4.x (4.0, 4.1, 4.2). The disk outlives the VM: Kill (SIGKILL of
// qemu: the filer crashes) and Start keep what was written through
// COMMIT or a stable WRITE (qemu writes the guest's flushed blocks into
// the image file; only qemu dies, not the host's page cache).
//
// The VM boots from a busybox initramfs built by the lab's routine (the
// same kernel and module routine as the front ends), with the host's
// nfs-kernel-server and rpcbind binaries, their libraries and /etc files
// copied in, rather than from a debootstrap image (sysimage.go): it boots
// in seconds instead of a minute, needs no root file system build, and
// the filer's only state is the export disk.
type KNFSServer struct {
	Addr string
	// Disk is the host path of the export's ext4 image.
	Disk string
	// Initramfs is the filer's boot archive.
	Initramfs string

	lab  *Lab
	o    KNFSOptions
	vm   *VM
	dir  string
	boot time.Duration
}

// NewKNFSServer builds the filer's initramfs and its disk (an ext4 image
// made with mkfs.ext4 -d from a host directory holding export/, filled by
// o.Populate, and v4recovery/). The VM is not started: call Start.
func (l *Lab) NewKNFSServer(ctx context.Context, o KNFSOptions) (*KNFSServer, error) {
	if o.DiskMB == 0 {
		o.DiskMB = 512
	}
	if o.Lease == 0 {
		o.Lease = 15 * time.Second
	}
	if o.Lease < 10*time.Second {
		return nil, fmt.Errorf("lab: knfsd lease %v: the kernel takes no less than 10 s", o.Lease)
	}
	if o.Threads == 0 {
		o.Threads = 8
	}
	if o.MemMB == 0 {
		o.MemMB = 384
	}
	s := &KNFSServer{Addr: KNFSAddr, lab: l, o: o, dir: filepath.Join(l.Dir, "knfsd")}
	s.Disk = filepath.Join(s.dir, "export.img")
	s.Initramfs = filepath.Join(s.dir, "initramfs.gz")
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	if err := ensureKNFSTools(ctx, l.opts.Install, l.logf); err != nil {
		return nil, err
	}
	a, err := PrepareAssets(ctx, l.opts.CacheDir, knfsModules, l.logf)
	if err != nil {
		return nil, err
	}
	if err := buildFilerInitramfs(ctx, a, s.Initramfs); err != nil {
		return nil, err
	}
	if err := s.makeDisk(ctx); err != nil {
		return nil, err
	}
	s.vm = l.NewVM(VMConfig{
		Host: "filer2.test", Addr: KNFSAddr, Tap: "tapf2",
		MemMB: o.MemMB, Stay: true,
		Initramfs: s.Initramfs, Disk: s.Disk,
		Append: fmt.Sprintf("lab.export=%s lab.lease=%d lab.threads=%d",
			KNFSExport, int(o.Lease/time.Second), o.Threads),
	})
	return s, nil
}

// makeDisk writes the export's ext4 image from a host directory.
func (s *KNFSServer) makeDisk(ctx context.Context) error {
	root := filepath.Join(s.dir, "root")
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	export := filepath.Join(root, strings.TrimPrefix(KNFSExport, "/srv/"))
	for _, d := range []string{export, filepath.Join(root, "v4recovery")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if s.o.Populate != nil {
		if err := s.o.Populate(export); err != nil {
			return err
		}
	}
	os.Remove(s.Disk)
	if err := runLogged(ctx, nil, "truncate", "-s", fmt.Sprintf("%dM", s.o.DiskMB), s.Disk); err != nil {
		return err
	}
	if err := runLogged(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", "labexport", "-d", root, s.Disk); err != nil {
		return err
	}
	return os.RemoveAll(root)
}

// Source is what a front end mounts, on any NFS version.
func (s *KNFSServer) Source() string { return s.Addr + ":" + KNFSExport }

// VM is the filer's virtual machine (console in logs/filer2.test.console.log).
func (s *KNFSServer) VM() *VM { return s.vm }

// Start boots the filer and waits until nfsd serves NFSv3 and NFSv4 and
// mountd answers, seen from the client namespace. It may be called again
// after Stop or Kill: a restarted filer (the NFSv4 grace period follows).
func (s *KNFSServer) Start(ctx context.Context) error {
	if err := s.vm.Start(ctx); err != nil {
		return err
	}
	d, err := s.vm.WaitReady(ctx, 3*time.Minute)
	if err != nil {
		return err
	}
	for _, prog := range [][]string{{"nfs", "3"}, {"nfs", "4"}, {"mountd", "3"}} {
		if err := waitFor(ctx, 30*time.Second, func() bool {
			return s.rpcinfo(ctx, "-T", "tcp", s.Addr, prog[0], prog[1]) == nil
		}, func() bool { return !s.vm.Running() }); err != nil {
			return fmt.Errorf("lab: knfsd %s v%s not answering: %v; console:\n%s", prog[0], prog[1], err, tail([]byte(s.vm.Console()), 2000))
		}
	}
	s.boot = d
	s.lab.logf("knfsd: %s serving %s, booted in %v", s.vm.Host, s.Source(), d.Round(10*time.Millisecond))
	return nil
}

// BootTime is how long the last Start took to see the filer ready.
func (s *KNFSServer) BootTime() time.Duration { return s.boot }

func (s *KNFSServer) rpcinfo(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l := s.lab
	return l.Net.Command(ctx, l.Net.Client, append([]string{"rpcinfo"}, args...)...).Run()
}

// Running reports whether the filer's qemu runs.
func (s *KNFSServer) Running() bool { return s.vm.Running() }

// Stop shuts the filer down cleanly: nfsd stopped, the disk unmounted,
// power off (killed if that does not happen within its grace).
func (s *KNFSServer) Stop(ctx context.Context) error { return s.vm.Poweroff(ctx) }

// Kill kills the filer's qemu with SIGKILL: the filer crashes; what nfsd
// had acknowledged as stable is on the disk image.
func (s *KNFSServer) Kill() { s.vm.Kill() }

// Restart stops the filer (SIGKILL when kill is true, else a clean power
// off) and boots it again.
func (s *KNFSServer) Restart(ctx context.Context, kill bool) error {
	if kill {
		s.Kill()
	} else if err := s.Stop(ctx); err != nil {
		return err
	}
	return s.Start(ctx)
}

// LinkDown cuts the filer off the network (its tap goes down): to its
// clients it hangs. LinkUp reconnects it.
func (s *KNFSServer) LinkDown(ctx context.Context) error { return s.vm.LinkDown(ctx) }

// LinkUp reconnects the filer.
func (s *KNFSServer) LinkUp(ctx context.Context) error { return s.vm.LinkUp(ctx) }

// ReadExport copies the export from the disk image into the host
// directory dst (made if needed) with debugfs (no loop device, no mount)
// and returns the copy's path (dst/export). The filer must be stopped: a
// running filer's disk is not consistent from outside.
func (s *KNFSServer) ReadExport(ctx context.Context, dst string) (string, error) {
	if s.vm.Running() {
		return "", fmt.Errorf("lab: knfsd: read the export only while the filer is stopped")
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	rel := strings.TrimPrefix(KNFSExport, "/srv")
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "rdump "+rel+" "+dst, s.Disk).CombinedOutput()
	if err != nil || strings.Contains(string(out), "rdump:") {
		return "", fmt.Errorf("lab: debugfs rdump %s: %v\n%s", rel, err, tail(out, 2000))
	}
	return filepath.Join(dst, filepath.Base(rel)), nil
}

// ensureKNFSTools makes sure the host has nfs-kernel-server's tools, to
// copy into the filer's initramfs. The package's services must not start
// on the host: a policy-rc.d that refuses every start is put in place for
// the installation (and removed again if the lab made it), and the host's
// nfs-server is stopped where systemd runs.
func ensureKNFSTools(ctx context.Context, install bool, logf func(string, ...any)) error {
	// The disk is made with mkfs.ext4 -d and read back with debugfs.
	for _, p := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := lookPath(p); err != nil {
			return &MissingError{Packages: []string{"e2fsprogs"}}
		}
	}
	missing := false
	for _, p := range knfsPrograms {
		if _, err := lookPath(p); err != nil {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	if !install {
		return &MissingError{Packages: []string{"nfs-kernel-server"}}
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# nfsdrop lab: no service starts while it installs packages\nexit 101\n"), 0o755); err != nil {
			return err
		}
		defer os.Remove(policy)
	}
	logf("installing Debian package nfs-kernel-server (its services kept from starting)")
	if out, err := aptGet(ctx, "install", "-y", "-q", "--no-install-recommends", "nfs-kernel-server"); err != nil {
		return fmt.Errorf("lab: apt-get install nfs-kernel-server: %v\n%s", err, tail(out, 2000))
	}
	if fileExists("/run/systemd/system") || dirExists("/run/systemd/system") {
		// Belt and braces: the host serves no NFS of its own.
		exec.CommandContext(ctx, "systemctl", "disable", "--now", "nfs-server.service").Run()
	}
	for _, p := range knfsPrograms {
		if _, err := lookPath(p); err != nil {
			return &MissingError{Packages: []string{"nfs-kernel-server"}, Detail: " (" + p + " still missing after apt-get install)"}
		}
	}
	return nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// knfsEtc are the /etc files of the filer VM: the RPC network
// configuration libtirpc reads, the user rpcbind drops its privileges to,
// name lookups from files only (mountd looks up its clients' names; there
// is no DNS in the lab), and /etc/mtab as mountd reads it.
func knfsEtc() (map[string]string, error) {
	files := map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/bin/sh\n_rpc:x:104:65534::/run/rpcbind:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":         "root:x:0:\nnogroup:x:65534:\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\nrpc: files\n",
		"etc/hosts":         "127.0.0.1 localhost\n" + KNFSAddr + " filer2.test\n" + ServerAddr + " filer1.test\n" + ClientAddr + " client.test\n",
		"etc/hostname":      "filer2.test\n",
	}
	for _, f := range []string{"etc/netconfig", "etc/services", "etc/protocols", "etc/rpc"} {
		b, err := os.ReadFile("/" + f)
		if err != nil {
			if f == "etc/netconfig" {
				return nil, fmt.Errorf("lab: the filer needs the host's /%s (libtirpc): %w", f, err)
			}
			continue
		}
		files[f] = string(b)
	}
	return files, nil
}

// buildFilerInitramfs writes the filer VM's initramfs: busybox, the
// modules of knfsModules in load order (the lab's module routine), the
// filer's /filer-init, lab-ctl and lab-stop (the same control channel as
// the front ends), and the nfs-kernel-server and rpcbind programs with
// their libraries and /etc files.
func buildFilerInitramfs(ctx context.Context, a *Assets, out string) error {
	return writeInitramfs(ctx, out, initramfsOptions{
		Busybox: a.Busybox,
		Init:    "filer-init",
		Dirs:    []string{"srv", "var/lib/nfs"},
		Add: func(c *newc) error {
			if err := c.modules(a.Modules); err != nil {
				return err
			}
			if err := addKNFSEtc(c); err != nil {
				return err
			}
			return addKNFSPrograms(ctx, c)
		},
	})
}

// addKNFSEtc writes knfsEtc's files, in a fixed order, and /etc/mtab.
func addKNFSEtc(c *newc) error {
	etc, err := knfsEtc()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(etc))
	for n := range etc {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.file(n, []byte(etc[n]), 0o644)
	}
	c.symlink("etc/mtab", "/proc/mounts")
	return nil
}

// addKNFSPrograms copies knfsPrograms from the host into /usr/sbin, and
// the shared libraries they need, each once, under the same paths.
func addKNFSPrograms(ctx context.Context, c *newc) error {
	libs := map[string]bool{}
	for _, p := range knfsPrograms {
		path, err := lookPath(p)
		if err != nil {
			return fmt.Errorf("lab: %s: %v", p, err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		c.file("usr/sbin/"+filepath.Base(path), b, 0o755)
		deps, err := sharedLibs(ctx, path)
		if err != nil {
			return err
		}
		for _, l := range deps {
			libs[l] = true
		}
	}
	sorted := make([]string, 0, len(libs))
	for l := range libs {
		sorted = append(sorted, l)
	}
	sort.Strings(sorted)
	for _, l := range sorted {
		b, err := os.ReadFile(l) // follows symbolic links
		if err != nil {
			return err
		}
		c.file(l, b, 0o755)
	}
	return nil
}

// sharedLibs lists the absolute paths ldd names for a program.
func sharedLibs(ctx context.Context, prog string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", prog).Output()
	if err != nil {
		return nil, fmt.Errorf("lab: ldd %s: %v", prog, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	return libs, nil
}
