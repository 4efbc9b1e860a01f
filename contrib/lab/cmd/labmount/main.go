// Command labmount mounts an NFS export inside a lab VM with the kernel's
// text mount options, so that every option of nfs(5) works (busybox mount
// knows only the old binary interface: no lookupcache, nocto, ...).
//
//	labmount SERVER:PATH DIR [OPTIONS]
//
// OPTIONS default to vers=3,nolock,proto=tcp; addr= is added from SERVER
// (an IP address) and, for NFSv2/v3, mountproto= from proto= when they are
// not given. With vers=4, 4.0, 4.1 or 4.2 the file system type is nfs4 and
// SERVER:PATH is a path of the server's NFSv4 pseudo file system (busybox
// mount cannot do this at all: it speaks only v2/v3). It is built
// statically into the lab's initramfs.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: labmount SERVER:PATH DIR [OPTIONS]")
		os.Exit(2)
	}
	src, dir := os.Args[1], os.Args[2]
	opts := "vers=3,nolock,proto=tcp"
	if len(os.Args) == 4 && os.Args[3] != "" {
		opts = os.Args[3]
	}
	host, _, ok := strings.Cut(src, ":")
	if !ok {
		fmt.Fprintln(os.Stderr, "labmount: source must be SERVER:PATH")
		os.Exit(2)
	}
	has := func(key string) (string, bool) {
		for _, o := range strings.Split(opts, ",") {
			k, v, _ := strings.Cut(o, "=")
			if k == key {
				return v, true
			}
		}
		return "", false
	}
	if _, ok := has("addr"); !ok {
		opts += ",addr=" + host
	}
	fstype := "nfs"
	if v, _ := has("vers"); strings.HasPrefix(v, "4") {
		// NFSv4 has no MOUNT protocol: no mountproto=.
		fstype = "nfs4"
	} else if _, ok := has("mountproto"); !ok {
		if p, ok := has("proto"); ok {
			opts += ",mountproto=" + p
		}
	}
	flags, opts := vfsFlags(opts)
	if err := syscall.Mount(src, dir, fstype, flags, opts); err != nil {
		fmt.Fprintf(os.Stderr, "labmount: mount -t %s %s on %s (%s): %v\n", fstype, src, dir, opts, err)
		os.Exit(1)
	}
}

// vfsOptions are the options mount(8) turns into mount(2) flags: the NFS
// option parser rejects them ("noatime": invalid argument).
var vfsOptions = map[string]uintptr{
	"ro": syscall.MS_RDONLY, "rw": 0, "noatime": syscall.MS_NOATIME, "nodiratime": syscall.MS_NODIRATIME,
	"relatime": syscall.MS_RELATIME, "nosuid": syscall.MS_NOSUID, "nodev": syscall.MS_NODEV,
	"noexec": syscall.MS_NOEXEC, "sync": syscall.MS_SYNCHRONOUS,
}

// vfsFlags takes the mount(2) flags out of opts and returns them with
// what is left for the NFS client.
func vfsFlags(opts string) (uintptr, string) {
	var flags uintptr
	var rest []string
	for _, o := range strings.Split(opts, ",") {
		if f, ok := vfsOptions[o]; ok {
			flags |= f
			continue
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ",")
}
