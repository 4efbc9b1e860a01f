package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// hostNeeds lists what the host must have: a program (or file) and the
// Debian package that brings it.
var hostNeeds = []struct{ path, pkg string }{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"ganesha.nfsd", "nfs-ganesha"},
	{"/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so", "nfs-ganesha-vfs"},
	{"rpcbind", "rpcbind"},
	{"rpcinfo", "rpcbind"},
	{"ip", "iproute2"},
	{"tc", "iproute2"},
	{"depmod", "kmod"},
	{"modprobe", "kmod"},
	{"nsenter", "util-linux"},
	{"unshare", "util-linux"},
	{"dpkg-deb", "dpkg"},
	{"apt-get", "apt"},
	{"go", "golang (or Go from go.dev)"},
	// The scale-out run (scaleout.go): a load balancer and an MTA.
	{"haproxy", "haproxy"},
	{"postfix", "postfix"},
	{"postqueue", "postfix"},
}

// MissingError says which Debian packages the host lacks.
type MissingError struct {
	Packages []string
	Detail   string
}

func (e *MissingError) Error() string {
	if len(e.Packages) == 0 {
		return "lab: " + e.Detail
	}
	return "lab: missing Debian packages: " + strings.Join(e.Packages, " ") +
		" (install them, or run go run ./cmd/nfsdrop-lab which installs them)" + e.Detail
}

// IsMissing reports whether err says that something the host needs (a
// package, root, a kernel package download) is not there.
func IsMissing(err error) bool {
	var m *MissingError
	return errors.As(err, &m)
}

// lookPath is exec.LookPath that also searches the sbin directories.
func lookPath(p string) (string, error) {
	if filepath.IsAbs(p) {
		if _, err := os.Stat(p); err != nil {
			return "", err
		}
		return p, nil
	}
	if path, err := exec.LookPath(p); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		c := filepath.Join(dir, p)
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", exec.ErrNotFound
}

// missingPackages returns the Debian packages of hostNeeds that are absent.
func missingPackages() []string {
	seen := map[string]bool{}
	var pkgs []string
	for _, n := range hostNeeds {
		if _, err := lookPath(n.path); err != nil && !seen[n.pkg] {
			seen[n.pkg] = true
			pkgs = append(pkgs, n.pkg)
		}
	}
	return pkgs
}

// EnsureHost checks that the host can run a lab: root, and the programs of
// hostNeeds. With install, missing packages are installed with apt-get;
// without, a *MissingError names them.
func EnsureHost(ctx context.Context, install bool, logf func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return &MissingError{Detail: "the lab needs root (namespaces, tap devices, NFS server)"}
	}
	pkgs := missingPackages()
	if len(pkgs) == 0 {
		return nil
	}
	if !install {
		return &MissingError{Packages: pkgs}
	}
	var apt []string
	for _, p := range pkgs {
		if !strings.Contains(p, " ") {
			apt = append(apt, p)
		}
	}
	for _, p := range apt {
		if p == "postfix" {
			// Postfix's installer asks debconf questions: answer them.
			sel := exec.CommandContext(ctx, "debconf-set-selections")
			sel.Stdin = strings.NewReader("postfix postfix/main_mailer_type select No configuration\n")
			if out, err := sel.CombinedOutput(); err != nil {
				logf("debconf-set-selections: %v: %s", err, out)
			}
		}
	}
	logf("installing Debian packages: %s", strings.Join(apt, " "))
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, apt...)
	if out, err := aptGet(ctx, args...); err != nil {
		// Stale package lists are the usual cause: update and try once more.
		if uout, uerr := aptGet(ctx, "update", "-q"); uerr != nil {
			return fmt.Errorf("lab: apt-get update: %v\n%s", uerr, tail(uout, 2000))
		}
		if out2, err2 := aptGet(ctx, args...); err2 != nil {
			return fmt.Errorf("lab: apt-get install: %v\n%s\n%s", err2, tail(out, 1000), tail(out2, 2000))
		}
	}
	if still := missingPackages(); len(still) > 0 {
		return &MissingError{Packages: still, Detail: " (still missing after apt-get install)"}
	}
	return nil
}

func aptGet(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	return cmd.CombinedOutput()
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// DefaultModules are the kernel modules the VMs load: the virtio network
// card and random number generator, NFSv3 and NFSv4 (nfsv4 brings
// dns_resolver; the kernel serves 4.0, 4.1 and 4.2 from it), and netem for
// fault injection and delay inside the guest (the host kernel may lack
// sch_netem, sch_prio and the u32 classifier: see VM.NetemTo).
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_rng", "nfsv3", "nfsv4", "sch_netem", "sch_prio", "cls_u32"}

// Assets are the files a VM boots from, cached by kernel version.
type Assets struct {
	// KernelVersion is the release, as in 6.1.0-56-amd64.
	KernelVersion string
	// Kernel is the vmlinuz file.
	Kernel string
	// Busybox is the static busybox binary.
	Busybox string
	// Modules are the .ko files, in load order.
	Modules []string
}

// DefaultCacheDir is $XDG_CACHE_HOME/nfsdrop-lab, or /var/tmp/nfsdrop-lab.
func DefaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nfsdrop-lab")
	}
	return "/var/tmp/nfsdrop-lab"
}

// PrepareAssets makes sure the kernel, its modules (with their
// dependencies, in load order) and busybox are in cacheDir and returns
// them. The kernel is Debian's current linux-image-amd64 dependency; when
// apt cannot name or fetch it, the newest kernel already cached is used.
// Nothing is installed: the packages are downloaded and unpacked.
func PrepareAssets(ctx context.Context, cacheDir string, modules []string, logf func(string, ...any)) (*Assets, error) {
	if len(modules) == 0 {
		modules = DefaultModules
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	pkg, err := kernelPackage(ctx)
	if err != nil {
		cached := newestCachedKernel(cacheDir)
		if cached == "" {
			return nil, &MissingError{Detail: "cannot name the kernel package: " + err.Error()}
		}
		logf("apt-cache failed (%v); using cached kernel %s", err, cached)
		pkg = "linux-image-" + cached
	}
	kver := strings.TrimPrefix(pkg, "linux-image-")
	kdir := filepath.Join(cacheDir, kver)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockFile(filepath.Join(kdir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	a := &Assets{
		KernelVersion: kver,
		Kernel:        filepath.Join(kdir, "vmlinuz"),
		Busybox:       filepath.Join(kdir, "busybox"),
	}
	modKey := sha256.Sum256([]byte(strings.Join(modules, "\n")))
	modDir := filepath.Join(kdir, "modules-"+hex.EncodeToString(modKey[:6]))
	order := filepath.Join(modDir, "order")

	if fileExists(a.Kernel) && fileExists(a.Busybox) && fileExists(order) {
		mods, err := readOrder(modDir, order)
		if err == nil {
			a.Modules = mods
			return a, nil
		}
	}

	// Download both packages (apt-get download puts them in the working
	// directory) and unpack them into a scratch tree.
	debs, err := filepath.Glob(filepath.Join(kdir, "*.deb"))
	if err != nil {
		return nil, err
	}
	if !hasDeb(debs, pkg) || !hasDeb(debs, "busybox-static") {
		logf("downloading %s and busybox-static", pkg)
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg, "busybox-static")
		cmd.Dir = kdir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, &MissingError{Detail: fmt.Sprintf("apt-get download %s busybox-static: %v\n%s", pkg, err, tail(out, 2000))}
		}
		if debs, err = filepath.Glob(filepath.Join(kdir, "*.deb")); err != nil {
			return nil, err
		}
	}
	scratch, err := os.MkdirTemp(kdir, "unpack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	for _, d := range debs {
		if !hasDeb([]string{d}, pkg) && !hasDeb([]string{d}, "busybox-static") {
			continue
		}
		logf("unpacking %s", filepath.Base(d))
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", d, scratch).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("lab: dpkg-deb -x %s: %v\n%s", d, err, out)
		}
	}
	if err := copyFile(filepath.Join(scratch, "boot", "vmlinuz-"+kver), a.Kernel, 0o644); err != nil {
		return nil, err
	}
	if err := copyFile(filepath.Join(scratch, "bin", "busybox"), a.Busybox, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", scratch, kver).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("lab: depmod: %v\n%s", err, out)
	}
	// -a: several modules (without it, the names after the first are
	// taken as module parameters).
	args := append([]string{"-d", scratch, "-S", kver, "-a", "--show-depends"}, modules...)
	out, err := exec.CommandContext(ctx, "modprobe", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("lab: modprobe --show-depends %v: %v", modules, err)
	}
	if err := os.RemoveAll(modDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return nil, err
	}
	var names []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "insmod" || seen[f[1]] {
			continue // "builtin X" lines need nothing
		}
		seen[f[1]] = true
		name, err := installModule(ctx, f[1], modDir)
		if err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	if err := os.WriteFile(order, []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	logf("kernel %s: %d modules (%s)", kver, len(names), strings.Join(names, " "))
	a.Modules, err = readOrder(modDir, order)
	return a, err
}

// installModule copies one module into dir, decompressing .ko.xz or
// .ko.zst (busybox insmod loads plain .ko), and returns its file name.
func installModule(ctx context.Context, src, dir string) (string, error) {
	base := filepath.Base(src)
	switch {
	case strings.HasSuffix(base, ".ko"):
		return base, copyFile(src, filepath.Join(dir, base), 0o644)
	case strings.HasSuffix(base, ".ko.xz"), strings.HasSuffix(base, ".ko.zst"):
		prog := "xz"
		if strings.HasSuffix(base, ".zst") {
			prog = "zstd"
		}
		out, err := exec.CommandContext(ctx, prog, "-dc", src).Output()
		if err != nil {
			return "", fmt.Errorf("lab: %s -dc %s: %v", prog, src, err)
		}
		name := base[:strings.LastIndex(base, ".ko")+3]
		return name, os.WriteFile(filepath.Join(dir, name), out, 0o644)
	}
	return "", fmt.Errorf("lab: module %s: unknown compression", src)
}

func readOrder(dir, order string) ([]string, error) {
	b, err := os.ReadFile(order)
	if err != nil {
		return nil, err
	}
	var mods []string
	for _, n := range strings.Fields(string(b)) {
		p := filepath.Join(dir, n)
		if !fileExists(p) {
			return nil, fmt.Errorf("lab: module %s missing", p)
		}
		mods = append(mods, p)
	}
	if len(mods) == 0 {
		return nil, errors.New("lab: empty module list")
	}
	return mods, nil
}

// kernelPackage asks apt which kernel package linux-image-amd64 depends on.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no linux-image package:\n%s", out)
}

// newestCachedKernel returns the kernel version of the most recently
// prepared cache entry, or "".
func newestCachedKernel(cacheDir string) string {
	ents, _ := os.ReadDir(cacheDir)
	type kv struct {
		name string
		mod  int64
	}
	var ks []kv
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(cacheDir, e.Name(), "vmlinuz"))
		if err == nil && e.IsDir() {
			ks = append(ks, kv{e.Name(), fi.ModTime().UnixNano()})
		}
	}
	if len(ks) == 0 {
		return ""
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].mod > ks[j].mod })
	return ks[0].name
}

// lockFile takes an exclusive flock on path (made if needed), so that two
// labs never prepare the same cache entry at once.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func hasDeb(debs []string, pkg string) bool {
	for _, d := range debs {
		if strings.HasPrefix(filepath.Base(d), pkg+"_") {
			return true
		}
	}
	return false
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// copyFile copies src to dst through a temporary name, so a reader never
// sees half a file.
func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, b, mode)
}

func writeFileAtomic(dst string, b []byte, mode os.FileMode) error {
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
