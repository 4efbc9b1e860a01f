package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// probe counts the GETATTR calls (from /proc/self/mountstats) that each
// variant of stat(2) and statx(2) sends for path: which attributes a
// caller asks for decides whether the NFS client revalidates its cached
// ones (nfs_getattr), and on NFSv4 an attribute the client could not take
// from the server's replies (an owner name it cannot map) stays invalid
// and costs a GETATTR on every stat that asks for it.
func probe(path string, n int) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		fatal(err)
	}
	fmt.Printf("probe %s: uid %d gid %d mode %o\n", path, st.Uid, st.Gid, st.Mode)
	statx := func(flags, mask int) func() error {
		return func() error {
			var stx unix.Statx_t
			return unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|flags, mask, &stx)
		}
	}
	variants := []struct {
		name string
		f    func() error
	}{
		{"lstat", func() error { return unix.Lstat(path, &st) }},
		{"statx TYPE|INO", statx(0, unix.STATX_TYPE|unix.STATX_INO)},
		{"statx MODE|NLINK|SIZE|MTIME|CTIME|INO", statx(0, unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_NLINK|unix.STATX_SIZE|unix.STATX_MTIME|unix.STATX_CTIME|unix.STATX_INO)},
		{"statx UID|GID", statx(0, unix.STATX_UID|unix.STATX_GID)},
		{"statx BLOCKS", statx(0, unix.STATX_BLOCKS)},
		{"statx BASIC_STATS DONT_SYNC", statx(unix.AT_STATX_DONT_SYNC, unix.STATX_BASIC_STATS)},
	}
	for _, v := range variants {
		before := getattrs()
		for i := 0; i < n; i++ {
			if err := v.f(); err != nil {
				fatal(err)
			}
		}
		fmt.Printf("probe %s: %s: %.2f GETATTR each\n", path, v.name, float64(getattrs()-before)/float64(n))
	}
}

// getattrs is the GETATTR count of the (only) NFS mount.
func getattrs() int64 {
	f, err := os.Open("/proc/self/mountstats")
	if err != nil {
		fatal(err)
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && fields[0] == "GETATTR:" {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			total += n
		}
	}
	return total
}
