package lab

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// A lab machine booted the way a server boots: a Debian root file system
// (debootstrap) with systemd as PID 1, Postfix and the NFS client, on an
// ext4 disk image, started from a small initramfs that only finds the disk
// and switches to it. The lab's Debian kernel boots it; its modules are
// copied into the image so that udev and mount load what they need.

// SystemdPackages are installed into the image on top of
// debootstrap --variant=minbase.
var SystemdPackages = []string{
	"systemd", "systemd-sysv", "udev", "kmod", "dbus", "procps", "iproute2",
	"postfix", "nfs-common", "ca-certificates", "curl", "openssl", "gpgv",
	// For the step that turns scanning on; it stays off (and clamd
	// stopped) until then, as on a machine without it.
	"clamav-daemon",
}

// bootModules find and mount the root disk; the rest comes from the image.
var bootModules = []string{"virtio_pci", "virtio_blk", "ext4"}

// SystemdImage is what a systemd VM boots from.
type SystemdImage struct {
	// Root is the cached root file system (a directory), shared by runs.
	Root string
	// Initramfs loads the disk's modules and switches to the disk.
	Initramfs string
	// RootBuild is how long making Root took (0 when it was cached).
	RootBuild time.Duration
}

// debianSuiteMirror is the host's Debian suite and its mirror.
func debianSuiteMirror() (suite, mirror string) {
	suite, mirror = "bookworm", "http://deb.debian.org/debian"
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		if m := regexp.MustCompile(`(?m)^VERSION_CODENAME=(\w+)`).FindSubmatch(data); m != nil {
			suite = string(m[1])
		}
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if m := regexp.MustCompile(`(?m)^URIs:\s*(\S+debian/?)\s*$`).FindSubmatch(data); m != nil {
			return suite, string(m[1])
		}
	}
	if data, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		if m := regexp.MustCompile(`(?m)^deb\s+(\S+debian/?)\s`).FindSubmatch(data); m != nil {
			mirror = string(m[1])
		}
	}
	return suite, mirror
}

// PrepareSystemdImage makes (once, then from the cache) the root file
// system with the lab kernel's modules, and the initramfs that boots it.
func (l *Lab) PrepareSystemdImage(ctx context.Context) (*SystemdImage, error) {
	t0 := time.Now()
	boot, err := PrepareAssets(ctx, l.opts.CacheDir, bootModules, l.logf)
	if err != nil {
		return nil, err
	}
	suite, mirror := debianSuiteMirror()
	// The cache is keyed by what goes in: suite, kernel, packages.
	key := sha256.Sum256([]byte(strings.Join(SystemdPackages, ",")))
	root := filepath.Join(l.opts.CacheDir, "systemd-root-"+suite+"-"+boot.KernelVersion+"-"+hex.EncodeToString(key[:4]))
	img := &SystemdImage{Root: root, Initramfs: filepath.Join(l.Dir, "boot-initramfs.gz")}
	if !fileExists(filepath.Join(root, ".complete")) {
		unlock, err := lockFile(root + ".lock")
		if err != nil {
			return nil, err
		}
		defer unlock()
		if !fileExists(filepath.Join(root, ".complete")) {
			if err := buildSystemdRoot(ctx, root, suite, mirror, boot, l.logf); err != nil {
				return nil, err
			}
			img.RootBuild = time.Since(t0)
		}
	}
	if err := buildBootInitramfs(boot, img.Initramfs); err != nil {
		return nil, err
	}
	l.logf("systemd image: root %s (built in %v), initramfs ready", root, img.RootBuild.Round(time.Second))
	return img, nil
}

func runLogged(ctx context.Context, env []string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: %s: %v\n%s", strings.Join(argv, " "), err, tail(out, 3000))
	}
	return nil
}

// buildSystemdRoot debootstraps into root.tmp, adds the kernel's modules
// and the lab's units, and renames it to root.
func buildSystemdRoot(ctx context.Context, root, suite, mirror string, boot *Assets, logf func(string, ...any)) error {
	tmp := root + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	logf("systemd image: debootstrap --variant=minbase %s with %s (once; cached in %s)", suite, strings.Join(SystemdPackages, ","), root)
	// Postfix asks debconf questions; noninteractive takes the defaults,
	// and the test configures it with postconf like an administrator.
	if err := runLogged(ctx, []string{"DEBIAN_FRONTEND=noninteractive"},
		"debootstrap", "--variant=minbase", "--include="+strings.Join(SystemdPackages, ","), suite, tmp, mirror); err != nil {
		return err
	}
	if err := installKernelModules(ctx, tmp, boot); err != nil {
		return err
	}
	if err := writeLabUnits(tmp); err != nil {
		return err
	}
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	if err := os.Rename(tmp, root); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, ".complete"), nil, 0o644)
}

// installKernelModules unpacks the lab kernel's package and copies its
// /lib/modules tree into the image (the image boots that kernel).
func installKernelModules(ctx context.Context, root string, boot *Assets) error {
	kdir := filepath.Dir(boot.Kernel)
	debs, _ := filepath.Glob(filepath.Join(kdir, "linux-image-"+boot.KernelVersion+"_*.deb"))
	if len(debs) == 0 {
		return fmt.Errorf("lab: no linux-image-%s .deb in %s", boot.KernelVersion, kdir)
	}
	scratch, err := os.MkdirTemp(kdir, "modules-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if err := runLogged(ctx, nil, "dpkg-deb", "-x", debs[0], scratch); err != nil {
		return err
	}
	dst := filepath.Join(root, "lib", "modules")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := runLogged(ctx, nil, "cp", "-a", filepath.Join(scratch, "lib", "modules", boot.KernelVersion), dst); err != nil {
		return err
	}
	return runLogged(ctx, nil, "depmod", "-b", root, boot.KernelVersion)
}

// Units and scripts of the image. lab-net gives eth0 the lab address
// (127.77.0.N needs route_localnet and a narrowed lo, see TESTING.md)
// before network-online.target; lab-agent is the control channel.
const labNetScript = `#!/bin/sh
set -e
. /etc/lab.env
sysctl -qw net.ipv4.conf.all.route_localnet=1
ip addr del 127.0.0.1/8 dev lo 2>/dev/null || true
ip addr replace 127.0.0.1/32 dev lo
ip link set lo up
sysctl -qw net.ipv4.conf.eth0.route_localnet=1
ip addr replace "$LAB_IP/24" dev eth0
ip link set eth0 up
`

const labNetUnit = `[Unit]
Description=lab network: the 127.77.0.0/24 address on eth0
DefaultDependencies=no
Wants=network-pre.target sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network-pre.target network.target network-online.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-net

[Install]
WantedBy=network-online.target multi-user.target
`

const labAgentUnit = `[Unit]
Description=lab control agent (contrib/lab/cmd/labagent)
Wants=lab-net.service
After=lab-net.service

[Service]
ExecStart=/usr/local/sbin/labagent -listen :7777
Restart=always
RestartSec=1s

[Install]
WantedBy=multi-user.target
`

func writeLabUnits(root string) error {
	files := map[string]string{
		"usr/local/sbin/lab-net":                                         labNetScript,
		"etc/systemd/system/lab-net.service":                             labNetUnit,
		"etc/systemd/system/lab-agent.service":                           labAgentUnit,
		"etc/systemd/journald.conf.d/lab.conf":                           "[Journal]\nStorage=persistent\n",
		"etc/systemd/system/network-online.target.wants/lab-net.service": "",
	}
	for rel, data := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if strings.HasSuffix(rel, "wants/lab-net.service") {
			continue
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(rel, "usr/local/sbin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			return err
		}
	}
	links := map[string]string{
		"etc/systemd/system/network-online.target.wants/lab-net.service": "/etc/systemd/system/lab-net.service",
		"etc/systemd/system/multi-user.target.wants/lab-net.service":     "/etc/systemd/system/lab-net.service",
		"etc/systemd/system/multi-user.target.wants/lab-agent.service":   "/etc/systemd/system/lab-agent.service",
	}
	for rel, target := range links {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	// clamd is off until the scanning step starts it, freshclam never
	// runs (no network: the step brings its own one-signature database).
	for _, unit := range []string{"clamav-daemon.service", "clamav-daemon.socket", "clamav-freshclam.service"} {
		for _, wants := range []string{"multi-user.target.wants", "sockets.target.wants"} {
			os.Remove(filepath.Join(root, "etc/systemd/system", wants, unit))
		}
	}
	if err := os.Symlink("/dev/null", filepath.Join(root, "etc/systemd/system/clamav-freshclam.service")); err != nil && !os.IsExist(err) {
		return err
	}
	// No Debian mirror is reachable from the lab network: the only
	// source is the nfsdrop repository the test adds.
	os.Remove(filepath.Join(root, "etc/apt/sources.list"))
	// The mail root's mount point; root logs in on the console without a
	// password (a lab machine only).
	if err := os.MkdirAll(filepath.Join(root, "var/mail/nfsdrop"), 0o755); err != nil {
		return err
	}
	return runLogged(context.Background(), nil, "chroot", root, "passwd", "-d", "root")
}

const bootInit = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/lab-modules); do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /newroot
if ! mount -t ext4 /dev/vda /newroot; then
	echo "nfsdrop-lab: cannot mount /dev/vda"
	poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`

// buildBootInitramfs writes an initramfs of busybox, the boot modules and
// an /init that switches to /dev/vda.
func buildBootInitramfs(a *Assets, out string) error {
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	gz, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	c := &newc{w: gz, dirs: map[string]bool{}}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "newroot", "lib/modules"} {
		c.dir(d)
	}
	c.chr("dev/console", 5, 1)
	c.chr("dev/null", 1, 3)
	bb, err := os.ReadFile(a.Busybox)
	if err != nil {
		return err
	}
	c.file("bin/busybox", bb, 0o755)
	for _, applet := range []string{"sh", "mount", "umount", "insmod", "sleep", "cat", "mkdir", "switch_root", "poweroff", "echo"} {
		c.symlink("bin/"+applet, "/bin/busybox")
	}
	c.file("init", []byte(bootInit), 0o755)
	if err := c.modules(a.Modules); err != nil {
		return err
	}
	if err := c.close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}

// PackImage writes the VM's disk: the cached root with files (path in the
// image -> content) laid over it, in a new ext4 image of sizeMB.
func (l *Lab) PackImage(ctx context.Context, img *SystemdImage, files map[string]string, out string, sizeMB int) error {
	dir, err := os.MkdirTemp(l.Dir, "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + img.Root + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("lab: overlay mount for the image: %w", err)
	}
	defer syscall.Unmount(merged, syscall.MNT_DETACH)
	for rel, data := range files {
		p := filepath.Join(merged, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(rel, "usr/local/sbin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(merged, ".complete"))
	os.Remove(out)
	if err := os.Truncate(out, 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := runLogged(ctx, nil, "truncate", "-s", fmt.Sprintf("%dM", sizeMB), out); err != nil {
		return err
	}
	return runLogged(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", "labroot", "-d", merged, out)
}
