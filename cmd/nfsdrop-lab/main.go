// Command nfsdrop-lab runs nfsdrop on real Linux NFS clients: it boots
// small virtual machines (qemu, software emulation) that mount one NFSv3
// export served by nfs-ganesha, all in private network namespaces on
// 127.77.0.0/24, and proves that several machines can deliver into the
// same Maildirs. See contrib/lab.
//
//	go run ./cmd/nfsdrop-lab -vms 2 -seconds 30
//
// Each VM runs the bare durable Maildir loop for -bare-seconds, then
// "nfsdrop deliver" in a loop for -seconds into -users shared Maildirs.
// Then every VM and the NFS server are stopped, and every message that
// deliver accepted must be in new/ exactly once. It prints boot time,
// rates and the NFS calls per delivery (from /proc/self/mountstats in the
// VMs), and exits 1 when a check fails.
//
// It needs root; missing Debian packages (qemu-system-x86, nfs-ganesha,
// nfs-ganesha-vfs, rpcbind, iproute2) are installed unless -install=false.
// The kernel and busybox are downloaded (not installed) into -cache.
// Everything it starts is stopped by PID and its namespaces are deleted,
// also on Ctrl-C; -clean removes what a killed run left behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab"
)

func main() { os.Exit(run()) }

func run() int {
	vms := flag.Int("vms", 2, "number of virtual machines (mx1.test, mx2.test, ...)")
	seconds := flag.Int("seconds", 30, "seconds of nfsdrop deliver in a loop on each VM")
	bare := flag.Int("bare-seconds", 10, "seconds of the bare Maildir loop on each VM")
	users := flag.Int("users", 3, "mailboxes every VM delivers into")
	mountOpts := flag.String("mount-opts", lab.DefaultMountOpts, "NFS mount options of the VMs (nfs(5))")
	cache := flag.String("cache", lab.DefaultCacheDir(), "cache of the kernel, modules and busybox")
	keep := flag.Bool("keep", false, "keep the run directory (export, logs, consoles)")
	install := flag.Bool("install", true, "install missing Debian packages with apt-get")
	clean := flag.Bool("clean", false, "only remove what killed lab runs left behind, then exit")
	quiet := flag.Bool("q", false, "no progress lines")
	binary := flag.String("nfsdrop", "", "static nfsdrop binary to run in the VMs (default: build ./cmd/nfsdrop with CGO_ENABLED=0)")
	flag.Parse()
	if *vms < 1 || *vms > 200 || *seconds < 1 || *bare < 1 || *users < 1 {
		fmt.Fprintln(os.Stderr, "nfsdrop-lab: -vms 1..200, -seconds, -bare-seconds and -users at least 1")
		return 2
	}

	logf := func(format string, args ...any) {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "nfsdrop-lab: %s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
		}
	}
	if *clean {
		lab.CleanStale(func(format string, args ...any) { fmt.Fprintf(os.Stderr, "nfsdrop-lab: "+format+"\n", args...) })
		return 0
	}

	// Ctrl-C, SIGTERM, SIGHUP: stop the run; the deferred Close stops the
	// VMs and servers by PID and deletes the namespaces.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	l, err := lab.New(ctx, lab.Options{CacheDir: *cache, KeepDir: *keep, Install: *install, Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "nfsdrop-lab:", err)
		return 1
	}
	defer func() {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: teardown:", err)
		}
		if *keep {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: run directory kept:", l.Dir)
		}
	}()
	logf("lab %s: namespaces %s %s %s", l.ID, l.Net.Switch, l.Net.Server, l.Net.Client)

	rep, err := lab.RunProof(ctx, l, lab.ProofOptions{
		VMs: *vms, BareSeconds: *bare, DeliverSeconds: *seconds, Users: *users, MountOpts: *mountOpts, NFSDrop: *binary,
	})
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: interrupted; stopping everything")
		} else {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab:", err)
		}
		return 1
	}
	fmt.Print(rep)
	if len(rep.Problems) > 0 {
		return 1
	}
	return 0
}
