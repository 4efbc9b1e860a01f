package lab

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

//go:embed guest/init guest/lab-ctl guest/lab-stop guest/filer-init
var guestFiles embed.FS

// newc is a writer of the cpio "newc" format the kernel unpacks into its
// initial root file system.
type newc struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

func (c *newc) entry(name string, mode uint32, data []byte, rmaj, rmin uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

// dir adds a directory and its parents, once each.
func (c *newc) dir(name string) {
	name = strings.Trim(path.Clean(name), "/")
	if name == "" || name == "." || c.dirs[name] {
		return
	}
	c.dir(path.Dir(name))
	c.dirs[name] = true
	c.entry(name, modeDir|0o755, nil, 0, 0)
}

func (c *newc) file(name string, data []byte, perm uint32) {
	name = strings.Trim(name, "/")
	c.dir(path.Dir(name))
	c.entry(name, modeFile|perm, data, 0, 0)
}

func (c *newc) symlink(name, target string) {
	name = strings.Trim(name, "/")
	c.dir(path.Dir(name))
	c.entry(name, modeLink|0o777, []byte(target), 0, 0)
}

func (c *newc) chr(name string, maj, min uint32) {
	name = strings.Trim(name, "/")
	c.dir(path.Dir(name))
	c.entry(name, modeChr|0o600, nil, maj, min)
}

func (c *newc) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}

// BuildInitramfs writes the VMs' initramfs (gzip-compressed cpio) to out:
// busybox with its applet links, the kernel modules in load order, the
// lab's /init, lab-ctl and lab-stop, the static labmount helper, and the
// host's tc with its libraries (for netem inside the guest).
func BuildInitramfs(ctx context.Context, a *Assets, labmount, out string) error {
	return writeInitramfs(ctx, out, initramfsOptions{
		Busybox: a.Busybox,
		Init:    "init",
		Dirs:    []string{"mnt", "var"},
		Add: func(c *newc) error {
			lm, err := os.ReadFile(labmount)
			if err != nil {
				return err
			}
			c.file("bin/labmount", lm, 0o755)
			if err := c.modules(a.Modules); err != nil {
				return err
			}
			c.file("etc/hostname", []byte("lab\n"), 0o644)
			return addDynamic(ctx, c, "tc", "usr/local/sbin/tc")
		},
	})
}

// baseDirs are the directories every lab guest's initramfs has.
var baseDirs = []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root"}

// initramfsOptions says what a lab VM's initramfs holds beyond the base.
type initramfsOptions struct {
	// Busybox is the static busybox binary.
	Busybox string
	// Init is the file under guest/ that becomes /init.
	Init string
	// Dirs are directories beyond baseDirs.
	Dirs []string
	// Add writes the VM's own files (modules, programs, /etc).
	Add func(c *newc) error
}

// writeInitramfs writes a lab VM's initramfs (gzip-compressed cpio) to
// out: what every lab guest needs (baseDirs and o.Dirs, /dev/console and
// /dev/null, busybox with its applet links, o.Init as /init, lab-ctl and
// lab-stop), then what o.Add writes. It writes out+".tmp" and renames it,
// so that an interrupted build never leaves a truncated image under out.
func writeInitramfs(ctx context.Context, out string, o initramfsOptions) error {
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	gz, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	c := &newc{w: gz, dirs: map[string]bool{}}
	for _, d := range append(append([]string(nil), baseDirs...), o.Dirs...) {
		c.dir(d)
	}
	// The kernel opens /dev/console for init's stdio before anything
	// could create it.
	c.chr("dev/console", 5, 1)
	c.chr("dev/null", 1, 3)
	if err := c.busybox(ctx, o.Busybox); err != nil {
		return err
	}
	for _, g := range []struct{ name, dst string }{{o.Init, "init"}, {"lab-ctl", "bin/lab-ctl"}, {"lab-stop", "bin/lab-stop"}} {
		b, err := guestFiles.ReadFile("guest/" + g.name)
		if err != nil {
			return err
		}
		c.file(g.dst, b, 0o755)
	}
	if err := o.Add(c); err != nil {
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

// busybox adds the static busybox and a link for each of its applets.
func (c *newc) busybox(ctx context.Context, path string) error {
	bb, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c.file("bin/busybox", bb, 0o755)
	list, err := exec.CommandContext(ctx, path, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("lab: busybox --list-full: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		l := strings.Trim(sc.Text(), "/")
		if l == "" || l == "bin/busybox" {
			continue
		}
		c.symlink(l, "/bin/busybox")
	}
	return nil
}

// addDynamic copies a host program and the shared libraries ldd names for
// it (under the same paths) into the initramfs.
func addDynamic(ctx context.Context, c *newc, prog, dst string) error {
	p, err := lookPath(prog)
	if err != nil {
		return fmt.Errorf("lab: %s: %v", prog, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	c.file(dst, b, 0o755)
	libs, err := sharedLibs(ctx, p)
	if err != nil {
		return err
	}
	sort.Strings(libs)
	seen := map[string]bool{}
	for _, l := range libs {
		if seen[l] {
			continue
		}
		seen[l] = true
		b, err := os.ReadFile(l) // follows symbolic links
		if err != nil {
			return err
		}
		c.file(l, b, 0o755)
	}
	return nil
}

// modules adds the kernel modules to the archive's lib/modules/ and their
// load order, as /init reads it, to etc/lab-modules.
func (c *newc) modules(paths []string) error {
	var order []string
	for _, m := range paths {
		b, err := os.ReadFile(m)
		if err != nil {
			return err
		}
		c.file("lib/modules/"+filepath.Base(m), b, 0o644)
		order = append(order, filepath.Base(m))
	}
	c.file("etc/lab-modules", []byte(strings.Join(order, "\n")+"\n"), 0o644)
	return nil
}
