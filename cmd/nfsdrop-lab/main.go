// Command nfsdrop-lab runs nfsdrop on real Linux NFS clients: it boots
// small virtual machines (qemu, software emulation) that mount one NFSv3 (or -nfs 4.1)
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
// With -scaleout it runs the scale-out proof instead (contrib/lab
// RunScaleOut): -vms machines each running lmtpd and pop3d behind HAProxy,
// a private Postfix delivering numbered, checksummed messages through it,
// POP3 clients keeping and deleting mail through it, faults on a fixed
// schedule (a VM killed and booted again, twice; a VM cut off from the
// NFS server; the NFS server killed and restarted; loss and delay), then
// a final POP3 drain, the export read with the NFS server stopped, and
// every invariant checked: nothing lost, resurrected, doubled or corrupt,
// no UIDL change, every lock recovered. -seconds is the length of the
// load (-faults=false for none).
//
//	go run ./cmd/nfsdrop-lab -scaleout -vms 3 -seconds 90
//
// With -scaling it measures (contrib/lab RunScaling): deliveries/s
// through lmtpd and POP3 logins/s with 1..-vms machines beside the bare
// Maildir loop, the NFS calls of each from the VMs' mountstats, the calls
// of a first and a repeat login on mailboxes of 1,000 and 5,000 messages,
// and the same under other mount options (-variants).
//
//	go run ./cmd/nfsdrop-lab -scaling -vms 3
//
// With -systemd it boots one Debian machine the way a server boots
// (contrib/lab RunSystemd): a debootstrap root with systemd as PID 1,
// Postfix and the NFS client on an ext4 image (cached in -cache), its mail
// root an NFS mount in /etc/fstab; it installs nfsdrop with apt-get from
// the repository packaging/build.sh makes, and checks socket activation,
// STATUS=, POP3/POP3S, reload, the watchdog, restart and stop/start and an
// upgrade under a stream of Postfix mail, the sweeper, a reboot, purge,
// systemd-analyze security and the journal. -systemd-short leaves out the
// slow steps (what CI runs); -dist uses packages already built.
//
//	go run ./cmd/nfsdrop-lab -systemd
//
// With -calls it counts NFS calls on each NFS version (contrib/lab
// RunCalls): one VM, one user, 300 × 2 KB messages; calls per delivery,
// per repeat POP3 login back to back and 4 s apart, per retrieved and
// deleted message, and the bare loop's per file, total and mutating, on
// NFSv3 and NFSv4.1 mounts, with the per-op breakdown; then the delivery,
// login and bare loop rates on the lab's link and with 2 ms added to
// every round trip to the filer (about 12 minutes; docs/scaling.md).
//
//	go run ./cmd/nfsdrop-lab -calls
//	go run ./cmd/nfsdrop-lab -calls -calls-versions 4.1 -calls-messages 100
//
// With -filers it runs issue 16's proof with two filers of different
// kinds (contrib/lab RunFilers): nfs-ganesha and the Linux kernel NFS
// server in its own VM, -vms front ends (2 unless given) each running
// lmtpd and pop3d with two volumes ("ganesha" over NFSv3, "knfsd" over
// NFSv4.1; -filers-ganesha-nfs and -filers-knfsd-nfs change them), users
// on both, the consistency-checking load through HAProxy and Postfix, and
// the faults in phases: a baseline, the kernel server SIGKILLed and
// booted again, its tap down for -filers-linkdown (60 s), mailboxes moved
// between the filers with "nfsdrop maildir move" (skipped when the binary
// lacks it). Per phase: acknowledged deliveries/s and 4xx answers per
// volume, POP3 logins/s, and the peak OS thread count of lmtpd and pop3d
// on each VM, before, during and after the fault; then every invariant.
// A binary that cannot load [[store.volumes]] runs as today's product can
// (one mail_root over both mounts, absolute homes: no per-volume guard, no
// move; -filers-legacy=false for stand-ins instead), and the report says
// LEGACY; -filers-stub runs stand-ins on the same mounts (the
// infrastructure alone).
//
//	go run ./cmd/nfsdrop-lab -filers
//	go run ./cmd/nfsdrop-lab -filers -filers-phase 10s -filers-linkdown 15s   # as CI (TestFilers)
//
// -nfs 3|4.1|4.2 chooses the NFS version the VMs mount for the other
// runs (default 3; -mount-opts overrides it).
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
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab"
)

func main() { os.Exit(run()) }

func run() int {
	vms := flag.Int("vms", 2, "number of virtual machines (mx1.test, mx2.test, ...)")
	seconds := flag.Int("seconds", 30, "seconds of nfsdrop deliver in a loop on each VM (-scaleout: of load, 90 unless given)")
	bare := flag.Int("bare-seconds", 10, "seconds of the bare Maildir loop on each VM")
	users := flag.Int("users", 3, "mailboxes every VM delivers into (-scaleout, -scaling: 8 unless given)")
	mountOpts := flag.String("mount-opts", lab.DefaultMountOpts, "NFS mount options of the VMs (nfs(5)); default from -nfs")
	nfsVers := flag.String("nfs", "3", "NFS version the VMs mount: "+strings.Join(lab.NFSVersions, ", ")+" (sets -mount-opts unless given)")
	calls := flag.Bool("calls", false, "count NFS calls per delivery, login and retrieved message on NFSv3 and NFSv4.1, beside the bare loop, and the rates with the filer near and 2 ms away")
	callsVersions := flag.String("calls-versions", "3,4.1", "with -calls: NFS versions, separated by commas")
	callsMessages := flag.Int("calls-messages", 300, "with -calls: messages delivered, retrieved and deleted (and bare loop files)")
	callsDelay := flag.Duration("calls-delay", 2*time.Millisecond, "with -calls: added to every round trip to the filer for the second rate measurement (0: none)")
	callsTrace := flag.String("calls-trace", "", "with -calls: guest kernel tracepoints recorded with their kernel stacks during the counted deliveries and bare loop, separated by commas (nfs4:nfs4_getattr)")
	callsProbe := flag.Bool("calls-probe", false, "with -calls: count the GETATTRs of stat variants in the VM after the bare loop (logged)")
	callsOwned := flag.Bool("calls-owned", false, "with -calls: the user has its own uid and gid (root lmtpd delivering for another owner)")
	callsCountOnly := flag.Bool("calls-count-only", false, "with -calls: only the counts, no rate measurements")
	cache := flag.String("cache", lab.DefaultCacheDir(), "cache of the kernel, modules and busybox")
	keep := flag.Bool("keep", false, "keep the run directory (export, logs, consoles)")
	install := flag.Bool("install", true, "install missing Debian packages with apt-get")
	clean := flag.Bool("clean", false, "only remove what killed lab runs left behind, then exit")
	quiet := flag.Bool("q", false, "no progress lines")
	scaleout := flag.Bool("scaleout", false, "run the scale-out proof (lmtpd + pop3d per VM behind HAProxy, Postfix, faults, invariants)")
	faults := flag.Bool("faults", true, "with -scaleout: apply the fault schedule")
	scaling := flag.Bool("scaling", false, "measure rates and NFS calls per delivery and per login with 1..-vms VMs, and mount option variants")
	variants := flag.String("variants", "", "with -scaling: mount option sets to compare, separated by ';' (default: "+lab.DefaultMountOpts+" plain, with actimeo=0, lookupcache=positive, nocto); \"none\" for none")
	binary := flag.String("nfsdrop", "", "static nfsdrop binary to run in the VMs (default: build ./cmd/nfsdrop with CGO_ENABLED=0)")
	systemdRun := flag.Bool("systemd", false, "boot a Debian machine with systemd as PID 1, install nfsdrop from the APT repository and check it end to end")
	systemdShort := flag.Bool("systemd-short", false, "with -systemd: only the quick steps (no watchdog, restarts, upgrade, reboot, purge)")
	dist := flag.String("dist", "", "with -systemd: directory with packages and repositories from packaging/build.sh (default: build them)")
	filers := flag.Bool("filers", false, "run the two-filer proof: nfs-ganesha and the kernel NFS server VM as two volumes, load, the second filer killed and cut off, mailboxes moved")
	filersPhase := flag.Duration("filers-phase", 30*time.Second, "with -filers: length of the baseline and of each window after a fault")
	filersLinkDown := flag.Duration("filers-linkdown", 60*time.Second, "with -filers: how long the kernel NFS server's tap stays down")
	filersGanesha := flag.String("filers-ganesha-nfs", "3", "with -filers: NFS version of the ganesha volume's mounts")
	filersKNFS := flag.String("filers-knfsd-nfs", "4.1", "with -filers: NFS version of the knfsd volume's mounts")
	filersStub := flag.Bool("filers-stub", false, "with -filers: run stand-ins instead of lmtpd and pop3d (the infrastructure alone)")
	filersLegacy := flag.Bool("filers-legacy", true, "with -filers: when the binary has no [[store.volumes]], run it as today's product can (one mail_root over both filers) instead of stand-ins")
	flag.Parse()
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *scaleout || *scaling {
		if !given["users"] {
			*users = 8
		}
		if !given["seconds"] {
			*seconds = 90
		}
		if !given["vms"] {
			*vms = 3
		}
	}
	if !given["mount-opts"] {
		o, err := lab.MountOptsFor(*nfsVers, "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: -nfs:", err)
			return 2
		}
		*mountOpts = o
	}
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

	if *systemdRun {
		r, err := lab.RunSystemd(ctx, l, lab.SystemdOptions{Dist: *dist, Long: !*systemdShort})
		if err != nil {
			return fail(ctx, err)
		}
		fmt.Print(r)
		if r.Failed() {
			return 1
		}
		return 0
	}

	if *calls {
		o := lab.CallsOptions{Versions: strings.Split(*callsVersions, ","), Messages: *callsMessages, Delay: *callsDelay, NFSDrop: *binary, CountOnly: *callsCountOnly, Probe: *callsProbe, Owned: *callsOwned}
		if *callsTrace != "" {
			o.Trace = strings.Split(*callsTrace, ",")
		}
		if *callsDelay == 0 {
			o.Delay = -1
		}
		r, err := lab.RunCalls(ctx, l, o)
		if err != nil {
			return fail(ctx, err)
		}
		fmt.Print(r)
		return 0
	}

	if *filers {
		o := lab.FilersOptions{NFSDrop: *binary, Phase: *filersPhase, LinkDown: *filersLinkDown, Stub: *filersStub, NoLegacy: !*filersLegacy}
		if given["vms"] {
			o.VMs = *vms
		}
		var err error
		if o.GaneshaMountOpts, err = lab.MountOptsFor(*filersGanesha, lab.SiteMountOpts); err != nil {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: -filers-ganesha-nfs:", err)
			return 2
		}
		if o.KNFSMountOpts, err = lab.MountOptsFor(*filersKNFS, lab.SiteMountOpts); err != nil {
			fmt.Fprintln(os.Stderr, "nfsdrop-lab: -filers-knfsd-nfs:", err)
			return 2
		}
		r, err := lab.RunFilers(ctx, l, o)
		if r != nil {
			fmt.Print(r)
		}
		if err != nil {
			return fail(ctx, err)
		}
		if r.Failed() {
			return 1
		}
		return 0
	}

	if *scaleout || *scaling {
		var rep interface{ String() string }
		failed := false
		if *scaleout {
			r, err := lab.RunScaleOut(ctx, l, lab.ScaleOutOptions{
				VMs: *vms, Users: *users, Load: time.Duration(*seconds) * time.Second, NFSDrop: *binary, MountOpts: *mountOpts, NoFaults: !*faults,
			})
			if err != nil {
				return fail(ctx, err)
			}
			rep, failed = r, r.Failed()
		} else {
			o := lab.ScalingOptions{MaxVMs: *vms, Users: *users, NFSDrop: *binary, MountOpts: *mountOpts}
			switch *variants {
			case "":
			case "none":
				o.NoVariants = true
			default:
				o.Variants = strings.Split(*variants, ";")
			}
			r, err := lab.RunScaling(ctx, l, o)
			if err != nil {
				return fail(ctx, err)
			}
			rep = r
		}
		fmt.Print(rep)
		if failed {
			return 1
		}
		return 0
	}

	rep, err := lab.RunProof(ctx, l, lab.ProofOptions{
		VMs: *vms, BareSeconds: *bare, DeliverSeconds: *seconds, Users: *users, MountOpts: *mountOpts, NFSDrop: *binary,
	})
	if err != nil {
		return fail(ctx, err)
	}
	fmt.Print(rep)
	if len(rep.Problems) > 0 {
		return 1
	}
	return 0
}

func fail(ctx context.Context, err error) int {
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "nfsdrop-lab: interrupted; stopping everything")
	} else {
		fmt.Fprintln(os.Stderr, "nfsdrop-lab:", err)
	}
	return 1
}
