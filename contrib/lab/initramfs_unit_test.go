package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// cpioEntry is one member of a newc archive as the kernel unpacks it.
type cpioEntry struct {
	mode       uint32
	rmaj, rmin uint32
	data       []byte
}

// readInitramfs reads back a gzip-compressed newc archive (what newc
// writes) by name. Reading it independently of the writer is the point:
// the test sees what the kernel will see.
func readInitramfs(t *testing.T, file string) map[string]cpioEntry {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	pad := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			t.Fatalf("%s: no newc header at offset %d", file, off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("%s: header at %d, field %d: %v", file, off, i, err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nameLen := field(1), int(field(6)), field(9), field(10), int(field(11))
		name := string(bytes.TrimRight(raw[off+110:off+110+nameLen], "\x00"))
		dataOff := pad(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			return entries
		}
		if _, dup := entries[name]; dup {
			t.Errorf("%s: %s twice", file, name)
		}
		entries[name] = cpioEntry{mode: mode, rmaj: rmaj, rmin: rmin, data: raw[dataOff : dataOff+size]}
		off = pad(dataOff + size)
	}
}

// fakeAssets are a stand-in busybox (a script that answers --list-full
// with two applets) and one kernel module, so that the images build
// without the kernel and busybox downloads.
func fakeAssets(t *testing.T) *Assets {
	t.Helper()
	dir := t.TempDir()
	bb := filepath.Join(dir, "busybox")
	script := "#!/bin/sh\n[ \"$1\" = --list-full ] && printf '/bin/sh\\nsbin/ip\\n'\n"
	if err := os.WriteFile(bb, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ko := filepath.Join(dir, "fake.ko")
	if err := os.WriteFile(ko, []byte("module"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Assets{Busybox: bb, Modules: []string{ko}}
}

// needHostPrograms fails the test under CI=true and skips it elsewhere
// when the host lacks a program an image copies from it.
func needHostPrograms(t *testing.T, progs ...string) {
	t.Helper()
	for _, p := range progs {
		if _, err := lookPath(p); err != nil {
			if testenv.CI() {
				t.Fatalf("%s (copied into the initramfs from the host): %v", p, err)
			}
			t.Skipf("%s (copied into the initramfs from the host): %v", p, err)
		}
	}
}

// TestInitramfsImages builds the front ends' and the kernel NFS filer's
// initramfs and reads each back: both hold what every lab guest needs (the
// directories, /dev/console and /dev/null, busybox and its applet links,
// /init, lab-ctl and lab-stop, the modules and their load order), and each
// its own files.
func TestInitramfsImages(t *testing.T) {
	needHostPrograms(t, append([]string{"tc", "ldd"}, knfsPrograms...)...)
	ctx := context.Background()
	a := fakeAssets(t)
	dir := t.TempDir()
	labmount := filepath.Join(dir, "labmount")
	if err := os.WriteFile(labmount, []byte("labmount"), 0o755); err != nil {
		t.Fatal(err)
	}
	front, filer := filepath.Join(dir, "front.img"), filepath.Join(dir, "filer.img")
	if err := BuildInitramfs(ctx, a, labmount, front); err != nil {
		t.Fatal(err)
	}
	if err := buildFilerInitramfs(ctx, a, filer); err != nil {
		t.Fatal(err)
	}
	guest := func(name string) []byte {
		b, err := guestFiles.ReadFile("guest/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, img := range []struct {
		file, init string
		dirs       []string
		files      map[string][]byte // path to content (nil: any)
		links      map[string]string
	}{
		{front, "init", []string{"mnt", "var"},
			map[string][]byte{"bin/labmount": []byte("labmount"), "usr/local/sbin/tc": nil, "etc/hostname": []byte("lab\n")}, nil},
		{filer, "filer-init", []string{"srv", "var/lib/nfs"},
			map[string][]byte{"usr/sbin/rpcbind": nil, "usr/sbin/rpc.nfsd": nil, "etc/netconfig": nil, "etc/hostname": []byte("filer2.test\n")},
			map[string]string{"etc/mtab": "/proc/mounts"}},
	} {
		t.Run(filepath.Base(img.file), func(t *testing.T) {
			e := readInitramfs(t, img.file)
			for _, d := range append([]string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "lib/modules"}, img.dirs...) {
				if got, ok := e[d]; !ok || got.mode != modeDir|0o755 {
					t.Errorf("directory %s: %+v, present %v", d, got, ok)
				}
			}
			for name, dev := range map[string][2]uint32{"dev/console": {5, 1}, "dev/null": {1, 3}} {
				if got, ok := e[name]; !ok || got.mode != modeChr|0o600 || got.rmaj != dev[0] || got.rmin != dev[1] {
					t.Errorf("device node %s: %+v, present %v; want character device %d,%d", name, got, ok, dev[0], dev[1])
				}
			}
			files := map[string][]byte{
				"init": guest(img.init), "bin/lab-ctl": guest("lab-ctl"), "bin/lab-stop": guest("lab-stop"),
				"lib/modules/fake.ko": []byte("module"), "etc/lab-modules": []byte("fake.ko\n"), "bin/busybox": nil,
			}
			for name, want := range img.files {
				files[name] = want
			}
			for name, want := range files {
				got, ok := e[name]
				if !ok || got.mode&0o170000 != modeFile || (want != nil && !bytes.Equal(got.data, want)) {
					t.Errorf("file %s: present %v, mode %o, %d bytes", name, ok, got.mode, len(got.data))
				}
			}
			links := map[string]string{"bin/sh": "/bin/busybox", "sbin/ip": "/bin/busybox"}
			for name, target := range img.links {
				links[name] = target
			}
			for name, target := range links {
				if got, ok := e[name]; !ok || got.mode != modeLink|0o777 || string(got.data) != target {
					t.Errorf("link %s: present %v, mode %o, target %q; want %q", name, ok, got.mode, got.data, target)
				}
			}
		})
	}
}
