// Command labmount mounts an NFS export inside a lab VM with the kernel's
// text mount options, so that every option of nfs(5) works (busybox mount
// knows only the old binary interface: no lookupcache, nocto, ...).
//
//	labmount SERVER:PATH DIR [OPTIONS]
//
// OPTIONS default to vers=3,nolock,proto=tcp; addr= is added from SERVER
// (an IP address) and mountproto= from proto= when they are not given.
// It is built statically into the lab's initramfs.
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
	if _, ok := has("mountproto"); !ok {
		if p, ok := has("proto"); ok {
			opts += ",mountproto=" + p
		}
	}
	if err := syscall.Mount(src, dir, "nfs", 0, opts); err != nil {
		fmt.Fprintf(os.Stderr, "labmount: mount %s on %s (%s): %v\n", src, dir, opts, err)
		os.Exit(1)
	}
}
