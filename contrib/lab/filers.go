package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab/loadcheck"
)

// The two volumes of a filers run, as the front ends see them: mail_root
// is a local directory of each VM holding one mount point per filer.
const (
	FilersMailRoot = "/srv/mail"
	VolGanesha     = "ganesha" // nfs-ganesha, the lab's filer (export subdirectory mailg/)
	VolKNFSD       = "knfsd"   // the kernel NFS server VM (KNFSServer)
	filersDomain   = "example.test"
)

// FilersVolumes are the volume names of a filers run, in order.
var FilersVolumes = []string{VolGanesha, VolKNFSD}

// FilersConfig is a front end's nfsdrop configuration for a filers run:
// ScaleOutConfig's daemons with mail_root a local directory and two
// volumes, one per filer, each with its own mount marker (the default
// name, at the volume's root). The [[store.volumes]] syntax is the one of
// issue 16's contract.
func FilersConfig(host, addr string, lockStale time.Duration) string {
	c := FilersLegacyConfig(host, addr, lockStale)
	for _, v := range FilersVolumes {
		c += fmt.Sprintf("\n[[store.volumes]]\nname = %q\npath = %q\nnew_mailboxes = true\n", v, FilersMailRoot+"/"+v)
	}
	return c
}

// FilersUser is user n (1-based) of a filers run: u1@example.test.
func FilersUser(n int) string { return fmt.Sprintf("u%d@%s", n, filersDomain) }

// FilersLegacyConfig is what today's product (no volumes) runs on the
// same mounts: mail_root the local /srv/mail, one marker there.
func FilersLegacyConfig(host, addr string, lockStale time.Duration) string {
	c := ScaleOutConfig(host, addr, lockStale)
	c = strings.Replace(c, fmt.Sprintf("mail_root = \"%s/mail\"", MountPoint), fmt.Sprintf("mail_root = %q", FilersMailRoot), 1)
	return strings.Replace(c, `default_domain = "lab.test"`, `default_domain = "`+filersDomain+`"`, 1)
}

// filersLegacyUsersFile names each mailbox by its absolute path below its
// volume's mount point, which today's product takes as a path under
// mail_root.
func filersLegacyUsersFile(users []string, volumeOf map[string]string) string {
	var b strings.Builder
	for _, u := range users {
		local, domain, _ := strings.Cut(u, "@")
		fmt.Fprintf(&b, "%s:{PLAIN}pw::::%s/%s/%s/%s::\n", u, FilersMailRoot, volumeOf[u], domain, local)
	}
	return b.String()
}

// filersUsersFile is the passwd-file of a filers run: each user's mailbox
// named on its volume, "VOLUME:example.test/uN" (issue 16's contract).
// The colon would split the home column, so the home is given in the
// extra fields (home=, which overrides the column, as in Dovecot).
func filersUsersFile(users []string, volumeOf map[string]string) string {
	var b strings.Builder
	for _, u := range users {
		local, domain, _ := strings.Cut(u, "@")
		fmt.Fprintf(&b, "%s:{PLAIN}pw::::::home=%s:%s/%s\n", u, volumeOf[u], domain, local)
	}
	return b.String()
}

// filersScript runs lmtpd and pop3d from /tmp like scaleOutScript, on the
// front end's two volume mounts, when the binary loads the volumes
// configuration ("nfsdrop check", here, where the volumes are mounted).
// Otherwise it runs them as today's product can (the "legacy"
// configuration: one mail_root, the local /srv/mail with its marker, the
// users' homes absolute paths below the two mount points: no per-volume
// guard), unless conf/legacy-off exists; failing both, or when conf/stub
// exists, stand-ins (filersStandin). /tmp/mode says which ("volumes",
// "legacy", "stand-ins"), /tmp/check.out why (and /tmp/check-legacy.out
// why not legacy).
const filersScript = `#!/bin/sh
# nfsdrop lab filers run (written by contrib/lab): lmtpd and pop3d on two volumes.
H=$LAB_HOST M=$LAB_MNT
cp "$M/bin/nfsdrop" /tmp/nfsdrop && cp "$M/conf/$H.toml" /tmp/nfsdrop.toml && cp "$M/conf/users" /tmp/users || exit 1
cp "$M/run/nfsdrop-standin" /tmp/nfsdrop-standin && chmod 755 /tmp/nfsdrop-standin || exit 1
# /tmp/pid.DAEMON names the running daemon for the thread sampler.
run() {
	while :; do
		/tmp/nfsdrop "$@" -c /tmp/nfsdrop.toml &
		echo $! >/tmp/pid.$1
		wait $!
		echo "nfsdrop-lab: nfsdrop $1 exited $?"
		sleep 1
	done
}
mode=stand-ins
if [ -e "$M/conf/stub" ]; then
	echo "stand-ins asked for" >/tmp/check.out
elif /tmp/nfsdrop check -c /tmp/nfsdrop.toml >/tmp/check.out 2>&1; then
	mode=volumes
elif [ ! -e "$M/conf/legacy-off" ]; then
	cp "$M/conf/$H.legacy.toml" /tmp/nfsdrop.toml && cp "$M/conf/users.legacy" /tmp/users || exit 1
	: >/srv/mail/.nfsdrop-mounted
	/tmp/nfsdrop check -c /tmp/nfsdrop.toml >/tmp/check-legacy.out 2>&1 && mode=legacy
fi
if [ $mode = stand-ins ]; then
	for v in ganesha knfsd; do
		/tmp/nfsdrop-standin lmtpd $v &
		/tmp/nfsdrop-standin pop3d $v &
	done
else
	run lmtpd &
	run pop3d &
fi
echo $mode >/tmp/mode
echo "nfsdrop-lab: $mode started host=$H"
wait
`

// filersStandin stands in for the daemons when the nfsdrop binary cannot
// load a configuration with volumes (the product's volume support is not
// merged): on each volume a loop that does what a delivery does to the
// file system (create, write, sync, rename into new/), or a login's
// reads, and counts its completions in /tmp/ops.VOLUME.KIND, so that the
// runner's faults, per-volume rates and thread sampling are exercised all
// the same. Its processes are named like the daemons for the sampler.
const filersStandin = `#!/bin/sh
# nfsdrop lab filers run, stand-in (written by contrib/lab): $1 is lmtpd or pop3d, $2 the volume.
V=/srv/mail/$2 D=/srv/mail/$2/standin/$LAB_HOST-$1 n=0
echo $$ >/tmp/pid.$1.$2
mkdir -p "$D/tmp" "$D/new"
while :; do
	n=$((n + 1))
	if [ "$1" = lmtpd ]; then
		echo "message $n" >"$D/tmp/$n" && sync "$D/tmp/$n" 2>/dev/null
		mv "$D/tmp/$n" "$D/new/$n"
		[ $((n % 50)) = 0 ] && rm -f "$D"/new/*
	else
		ls "$D" >/dev/null && cat "$V/.nfsdrop-mounted" >/dev/null
	fi
	echo "$n" >"/tmp/ops.$2.$1"
	usleep 100000
done
`

// sampleCommand prints, in one line of shell run through the control
// channel, "threads KIND N" for the lmtpd and pop3d processes (the
// nfsdrop daemons, or the stand-ins) that the VM script named in
// /tmp/pid.KIND[.VOLUME], and "ops VOLUME.KIND N" for the stand-ins'
// counters. Shell builtins only: a fork costs much under emulation on a
// loaded host, and the reading must come every second. It touches no NFS
// mount: it answers while a filer hangs.
const sampleCommand = `for f in /tmp/pid.*; do k=${f#/tmp/pid.}; k=${k%%.*}; read -r p <$f; while read -r a b _; do [ "$a" = Threads: ] && echo "threads $k $b"; done </proc/$p/status; done 2>/dev/null; for f in /tmp/ops.*; do [ -e "$f" ] && read -r n <$f && echo "ops ${f#/tmp/ops.} $n"; done; true`

// ThreadSample is one reading of a VM's daemons.
type ThreadSample struct {
	At time.Time
	// Threads is the OS thread count per daemon (lmtpd, pop3d), summed
	// over its processes.
	Threads map[string]int
	// Ops are the stand-ins' completed operations per VOLUME.KIND.
	Ops map[string]int
}

// SampleThreads reads the thread counts of the VM's lmtpd and pop3d
// (from /proc/PID/status, over the control channel).
func (v *VM) SampleThreads(ctx context.Context) (ThreadSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, code, err := v.Exec(ctx, sampleCommand)
	if err != nil || code != 0 {
		return ThreadSample{}, fmt.Errorf("lab: %s: sampling threads: exit %d, %v: %s", v.Host, code, err, out)
	}
	return parseThreadSample(time.Now(), out), nil
}

// parseThreadSample reads sampleCommand's output.
func parseThreadSample(at time.Time, out string) ThreadSample {
	s := ThreadSample{At: at, Threads: map[string]int{}, Ops: map[string]int{}}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		n, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		switch f[0] {
		case "threads":
			s.Threads[f[1]] += n
		case "ops":
			s.Ops[f[1]] = n
		}
	}
	return s
}

// FilersOptions configures RunFilers.
type FilersOptions struct {
	// VMs is the number of front ends (default 2).
	VMs int
	// UsersPerVolume (default 3): users u1..uN on ganesha, the next N on knfsd.
	UsersPerVolume int
	// NFSDrop is a static nfsdrop binary; "" builds one.
	NFSDrop string
	// GaneshaMountOpts and KNFSMountOpts are the front ends' mount options
	// of each filer (defaults: NFSv3 and NFSv4.1, with SiteMountOpts).
	GaneshaMountOpts, KNFSMountOpts string
	// Phase is the length of the baseline and of each "after" window
	// (default 30 s).
	Phase time.Duration
	// LinkDown is how long the kernel server's tap stays down (default 60 s).
	LinkDown time.Duration
	// LockStale is pop3.lock_stale (default 90 s: longer than the
	// filers' outages, the link down and a killed knfsd's reboot plus its
	// NFSv4 grace; a lock whose filer is away longer than lock_stale may
	// be taken over while its session's deletions are still in the
	// kernel, docs/nfs.md).
	LockStale time.Duration
	// Rate is the submission rate over all users (default 4 messages/s):
	// fixed, so that deliveries held up on one volume do not slow the
	// submissions for the other (the outstanding-message limit is lifted).
	Rate float64
	// Stub runs stand-ins instead of the daemons even when the binary
	// loads the configuration: the infrastructure alone.
	Stub bool
	// NoLegacy: when the binary cannot load the volumes configuration,
	// run stand-ins rather than today's product on one mail_root.
	NoLegacy bool
	// NoMove leaves out the phase that moves mailboxes between filers.
	NoMove bool
}

func (o *FilersOptions) defaults() {
	if o.VMs == 0 {
		o.VMs = 2
	}
	if o.UsersPerVolume == 0 {
		o.UsersPerVolume = 3
	}
	if o.GaneshaMountOpts == "" {
		o.GaneshaMountOpts, _ = MountOptsFor("3", SiteMountOpts)
	}
	if o.KNFSMountOpts == "" {
		o.KNFSMountOpts, _ = MountOptsFor("4.1", SiteMountOpts)
	}
	if o.Phase == 0 {
		o.Phase = 30 * time.Second
	}
	if o.LinkDown == 0 {
		o.LinkDown = 60 * time.Second
	}
	if o.LockStale == 0 {
		o.LockStale = 90 * time.Second
	}
	if o.Rate == 0 {
		o.Rate = 4
	}
}

// Window is a stretch of a phase: before, during or after its fault.
type Window struct {
	Name       string
	Start, End time.Time
	// Acked are deliveries acknowledged (Postfix logged the 250) per
	// volume, per second; TempFail the 4xx answers per volume in the
	// window and OtherDeferred the deliveries deferred otherwise
	// (connection lost or timed out).
	Acked         map[string]float64
	TempFail      map[string]int
	OtherDeferred map[string]int
	// Logins are POP3 logins per second per volume.
	Logins map[string]float64
	// Ops are the stand-ins' operations per second per volume.
	Ops map[string]float64
	// PeakThreads is the highest thread count seen per "HOST daemon".
	PeakThreads map[string]int
}

// Phase is one step of a filers run.
type Phase struct {
	Name string
	// Skipped says why the phase did not run ("" when it ran).
	Skipped string
	Note    string
	Err     string
	Windows []*Window
}

// FilersReport is what RunFilers did and found.
type FilersReport struct {
	Stub bool
	// Mode is what the front ends ran: "volumes" (the daemons with
	// [[store.volumes]]), "legacy" (the daemons as today's product runs:
	// one mail_root over both mounts, no per-volume guard) or
	// "stand-ins"; ModeReason says why when it is not "volumes" (the
	// binary's error loading the volumes configuration).
	Mode, ModeReason                string
	VMs                             int
	GaneshaMountOpts, KNFSMountOpts string
	Phases                          []*Phase
	Load                            *loadcheck.Report
	// SampleFailures counts per VM the failed thread readings (the
	// control channel did not answer within 10 s), with the last error.
	SampleFailures        map[string]int
	LastSampleError       map[string]string
	Problems              []string
	Setup, Total          time.Duration
	KNFSBoot              time.Duration
	Cores                 int
	LoadBefore, LoadAfter string
}

// Failed reports whether an invariant was violated or the run went wrong.
func (r *FilersReport) Failed() bool {
	if len(r.Problems) > 0 {
		return true
	}
	return !r.Stub && (r.Load == nil || r.Load.Violations() > 0)
}

func (r *FilersReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nfsdrop filers run: %d front ends, volume %s on nfs-ganesha (%s), volume %s on the kernel NFS server VM (%s)\n",
		r.VMs, VolGanesha, r.GaneshaMountOpts, VolKNFSD, r.KNFSMountOpts)
	switch r.Mode {
	case "stand-ins":
		fmt.Fprintf(&b, "STAND-INS instead of lmtpd/pop3d (infrastructure only): %s\n", r.ModeReason)
	case "legacy":
		fmt.Fprintf(&b, "LEGACY: today's product, one mail_root over both mounts, no volumes (%s)\n", r.ModeReason)
	}
	fmt.Fprintf(&b, "time: setup %v (knfsd boot %v), total %v; host %d cores, load average %s before, %s after\n",
		r.Setup.Round(time.Second), r.KNFSBoot.Round(100*time.Millisecond), r.Total.Round(time.Second), r.Cores, r.LoadBefore, r.LoadAfter)
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "phase %s", p.Name)
		if p.Skipped != "" {
			fmt.Fprintf(&b, ": SKIPPED: %s\n", p.Skipped)
			continue
		}
		if p.Note != "" {
			fmt.Fprintf(&b, " (%s)", p.Note)
		}
		if p.Err != "" {
			fmt.Fprintf(&b, " ERROR %s", p.Err)
		}
		b.WriteString("\n")
		for _, w := range p.Windows {
			fmt.Fprintf(&b, "  %-7s %5.1fs", w.Name, w.End.Sub(w.Start).Seconds())
			for _, v := range FilersVolumes {
				if r.Stub {
					fmt.Fprintf(&b, " | %s: %.1f ops/s", v, w.Ops[v])
				} else {
					fmt.Fprintf(&b, " | %s: %.2f acked/s, %d 4xx, %d other deferrals, %.2f logins/s", v, w.Acked[v], w.TempFail[v], w.OtherDeferred[v], w.Logins[v])
				}
			}
			b.WriteString(" | peak threads:")
			keys := make([]string, 0, len(w.PeakThreads))
			for k := range w.PeakThreads {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(&b, " %s %d", k, w.PeakThreads[k])
			}
			b.WriteString("\n")
		}
	}
	for host, n := range r.SampleFailures {
		fmt.Fprintf(&b, "thread sampling on %s: %d failed readings (last: %s)\n", host, n, r.LastSampleError[host])
	}
	if r.Load != nil {
		b.WriteString(r.Load.String())
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "run problem: %s\n", p)
	}
	return b.String()
}

// FilersLab is a running filers setup.
type FilersLab struct {
	*ScaleOutLab
	KNFS *KNFSServer
	// VolumeOf is each user's volume (updated when a mailbox moves).
	VolumeOf map[string]string
	// Mode: what the front ends run (see FilersReport.Mode); Stub when
	// stand-ins.
	Mode, ModeReason string
	Stub             bool
	mu               sync.Mutex
}

// hasMove reports whether the binary has "nfsdrop maildir move".
func hasMove(ctx context.Context, binary string) bool {
	out, _ := exec.CommandContext(ctx, binary, "maildir", "--help").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.TrimSuffix(f[0], ",") == "move" {
			return true
		}
	}
	return false
}

// StartFilers lays out the export (binary, users on both volumes, the
// configurations, ganesha's volume directory mailg/ with its marker),
// makes the kernel server's disk (its export holding the knfsd volume's
// marker), starts both filers and the front ends (ganesha's export at
// MountPoint, its mailg/ bound at FilersMailRoot/ganesha, the kernel
// server's export at FilersMailRoot/knfsd). Each front end runs lmtpd and
// pop3d if "nfsdrop check" accepts the volumes configuration there, and
// then HAProxy and Postfix are started; otherwise (or with o.Stub) the
// front ends run stand-ins, f.Stub is set and StubReason says why.
func StartFilers(ctx context.Context, l *Lab, o FilersOptions) (*FilersLab, error) {
	o.defaults()
	users := 2 * o.UsersPerVolume
	if err := l.PrepareNFSDrop(ctx, o.NFSDrop, o.VMs, 0); err != nil {
		return nil, err
	}
	f := &FilersLab{ScaleOutLab: &ScaleOutLab{Lab: l}, VolumeOf: map[string]string{}}
	for u := 1; u <= users; u++ {
		user := FilersUser(u)
		f.Users = append(f.Users, user)
		f.VolumeOf[user] = FilersVolumes[(u-1)/o.UsersPerVolume]
	}
	conf := filepath.Join(l.Export, "conf")
	if err := os.WriteFile(filepath.Join(conf, "users"), []byte(filersUsersFile(f.Users, f.VolumeOf)), 0o644); err != nil {
		return nil, err
	}
	for i := 1; i <= o.VMs; i++ {
		host := fmt.Sprintf("mx%d.test", i)
		if err := os.WriteFile(filepath.Join(conf, host+".toml"), []byte(FilersConfig(host, VMAddr(i), o.LockStale)), 0o644); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= o.VMs; i++ {
		host := fmt.Sprintf("mx%d.test", i)
		if err := os.WriteFile(filepath.Join(conf, host+".legacy.toml"), []byte(FilersLegacyConfig(host, VMAddr(i), o.LockStale)), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(conf, "users.legacy"), []byte(filersLegacyUsersFile(f.Users, f.VolumeOf)), 0o644); err != nil {
		return nil, err
	}
	for flag, on := range map[string]bool{"stub": o.Stub, "legacy-off": o.NoLegacy} {
		if on {
			if err := os.WriteFile(filepath.Join(conf, flag), nil, 0o644); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(l.Export, "mailg"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(l.Export, "mailg", ".nfsdrop-mounted"), nil, 0o644); err != nil {
		return nil, err
	}
	if _, err := l.WriteScript("nfsdrop-standin", filersStandin); err != nil {
		return nil, err
	}
	script, err := l.WriteScript("filers.sh", filersScript)
	if err != nil {
		return nil, err
	}
	f.KNFS, err = l.NewKNFSServer(ctx, KNFSOptions{Populate: func(export string) error {
		return os.WriteFile(filepath.Join(export, ".nfsdrop-mounted"), nil, 0o644)
	}})
	if err != nil {
		return nil, err
	}
	if err := l.NFS.Start(ctx); err != nil {
		return f, err
	}
	if err := f.KNFS.Start(ctx); err != nil {
		return f, err
	}
	err = f.bootFrontEnds(ctx, o.VMs, func(int) VMConfig {
		return VMConfig{Script: script, MountOpts: o.GaneshaMountOpts, Grace: 10 * time.Second, Mounts: []Mount{
			{Source: MountPoint + "/mailg", Point: FilersMailRoot + "/" + VolGanesha, Opts: "bind"},
			{Source: f.KNFS.Source(), Point: FilersMailRoot + "/" + VolKNFSD, Opts: o.KNFSMountOpts},
		}}
	})
	if err != nil {
		return f, err
	}
	mode, why, err := f.mode(ctx)
	if err != nil {
		return f, err
	}
	f.Mode = mode
	if mode != "volumes" {
		f.ModeReason = why
		l.logf("filers: the front ends run %s: %s", mode, why)
	}
	if mode == "stand-ins" {
		f.Stub = true
		return f, nil
	}
	return f, f.startBalancer(ctx, &PostfixOptions{Domains: []string{filersDomain}})
}

// mode waits until mx1's script has chosen between the daemons and the
// stand-ins and returns its choice and "nfsdrop check"'s output.
func (f *FilersLab) mode(ctx context.Context) (mode, why string, err error) {
	v := f.VMs[0]
	err = waitFor(ctx, 2*time.Minute, func() bool {
		out, code, err := v.Exec(ctx, "cat /tmp/mode")
		mode = strings.TrimSpace(out)
		return err == nil && code == 0 && mode != ""
	}, func() bool { return !v.Running() })
	if err != nil {
		return "", "", fmt.Errorf("lab: %s chose neither the daemons nor stand-ins: %v; console:\n%s", v.Host, err, tail([]byte(v.Console()), 2000))
	}
	out, _, _ := v.Exec(ctx, "cat /tmp/check.out")
	return mode, "nfsdrop check: " + strings.Join(strings.Fields(tail([]byte(out), 400)), " "), nil
}

// filersRun is the state of one RunFilers.
type filersRun struct {
	f   *FilersLab
	o   FilersOptions
	rep *FilersReport
	ld  *loadcheck.Load
	log *loadcheck.Maillog

	mu      sync.Mutex
	counts  []countSample
	threads map[string][]ThreadSample // per VM host
}

// countSample is the mail log's per-volume totals at one moment.
type countSample struct {
	At                        time.Time
	Acked, TempFail, Deferred map[string]int
}

// RunFilers is issue 16's proof with two filers of different kinds:
// front ends running lmtpd and pop3d on two volumes (one on ganesha, one
// on the kernel NFS server VM), the consistency-checking load through
// HAProxy and Postfix, and the faults in phases: a baseline; the kernel
// server SIGKILLed and booted again; its tap down for LinkDown; mailboxes
// moved between the filers with "nfsdrop maildir move" (skipped, saying
// so, when the binary lacks the command). Each phase reports per-volume
// delivery and login rates, 4xx answers and the daemons' peak thread
// counts before, during and after its fault; then every invariant of
// loadcheck.Check. When the binary cannot load the volumes configuration,
// the same phases run on stand-ins (see FilersReport.Stub).
func RunFilers(ctx context.Context, l *Lab, o FilersOptions) (*FilersReport, error) {
	o.defaults()
	t0 := time.Now()
	rep := &FilersReport{VMs: o.VMs, GaneshaMountOpts: o.GaneshaMountOpts, KNFSMountOpts: o.KNFSMountOpts, Cores: runtime.NumCPU(), LoadBefore: loadavg(),
		SampleFailures: map[string]int{}, LastSampleError: map[string]string{}}
	f, err := StartFilers(ctx, l, o)
	if f != nil && f.KNFS != nil {
		rep.KNFSBoot = f.KNFS.BootTime()
	}
	if err != nil {
		return rep, err
	}
	rep.Stub, rep.Mode, rep.ModeReason = f.Stub, f.Mode, f.ModeReason
	rep.Setup = time.Since(t0)
	r := &filersRun{f: f, o: o, rep: rep, threads: map[string][]ThreadSample{}}
	if !f.Stub {
		if err := r.startLoad(ctx); err != nil {
			return rep, err
		}
	}
	stopSampling := r.sample(ctx)
	r.phases(ctx)
	stopSampling()
	if f.Stub {
		r.finishStub(ctx)
	} else if err := r.finish(ctx); err != nil {
		return rep, err
	}
	rep.Total = time.Since(t0)
	rep.LoadAfter = loadavg()
	return rep, nil
}

func (r *filersRun) startLoad(ctx context.Context) error {
	f, l := r.f, r.f.Lab
	r.log = loadcheck.NewMaillog(f.Postfix.LogFile)
	cfg := loadcheck.Config{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.Net.Dial(ctx, l.Net.Client, network, addr)
		},
		SMTPAddr: fmt.Sprintf("127.0.0.1:%d", f.Postfix.SMTPPort),
		POP3Addr: f.HAProxy.POP3Addr,
		Users:    f.Users, Password: "pw",
		Run:  l.ID,
		Rate: r.o.Rate,
		// Deliveries held up on one volume must not hold up the
		// submissions for the other: the rate is fixed instead.
		MaxOutstanding: 100000,
		// POP3 clients per volume: sessions stuck on a hung volume
		// must not take every client from the other.
		Keepers: 2, Deleters: 3, UserGroups: r.usersByVolume(),
		Log:  r.log,
		Seed: 1,
		Logf: l.logf,
	}
	var err error
	r.ld, err = loadcheck.Start(ctx, cfg)
	return err
}

// usersByVolume groups the users by their volume, in FilersVolumes order.
func (r *filersRun) usersByVolume() [][]string {
	var groups [][]string
	for _, v := range FilersVolumes {
		var g []string
		for _, u := range r.f.Users {
			if r.f.VolumeOf[u] == v {
				g = append(g, u)
			}
		}
		groups = append(groups, g)
	}
	return groups
}

// sample polls the mail log and every VM's daemons once a second until
// the returned function is called.
func (r *filersRun) sample(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	tick := func(every time.Duration, f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				f()
				select {
				case <-done:
					return
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	if r.log != nil {
		tick(time.Second, func() {
			r.log.Poll()
			sent, temp, other := r.log.PerRecipient()
			cs := countSample{At: time.Now(), Acked: r.perVolume(sent), TempFail: r.perVolume(temp), Deferred: r.perVolume(other)}
			r.mu.Lock()
			r.counts = append(r.counts, cs)
			r.mu.Unlock()
		})
	}
	for _, v := range r.f.VMs {
		tick(time.Second, func() {
			s, err := v.SampleThreads(ctx)
			if err != nil {
				// No reading this second; the report counts them.
				r.mu.Lock()
				r.rep.SampleFailures[v.Host]++
				r.rep.LastSampleError[v.Host] = err.Error()
				r.mu.Unlock()
				return
			}
			r.mu.Lock()
			r.threads[v.Host] = append(r.threads[v.Host], s)
			r.mu.Unlock()
		})
	}
	return func() { close(done); wg.Wait() }
}

// perVolume sums per-recipient counts by the recipient's volume at the
// start of the run (a moved user counts for the volume it started on).
func (r *filersRun) perVolume(byRcpt map[string]int) map[string]int {
	out := map[string]int{}
	for u, n := range byRcpt {
		out[r.initialVolume(u)] += n
	}
	return out
}

func (r *filersRun) initialVolume(user string) string {
	for i, u := range r.f.Users {
		if u == user {
			return FilersVolumes[i/r.o.UsersPerVolume]
		}
	}
	return "?"
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// phases runs the fault phases in order, each with its windows.
func (r *filersRun) phases(ctx context.Context) {
	o, k := r.o, r.f.KNFS
	l := r.f.Lab
	// baseline
	p := &Phase{Name: "baseline"}
	r.rep.Phases = append(r.rep.Phases, p)
	t := time.Now()
	sleep(ctx, o.Phase)
	p.Windows = append(p.Windows, &Window{Name: "during", Start: t, End: time.Now()})
	before := t

	// The kernel server crashes and boots again.
	p = &Phase{Name: "knfsd SIGKILLed and restarted"}
	r.rep.Phases = append(r.rep.Phases, p)
	tKill := time.Now()
	l.logf("filers: fault: knfsd SIGKILL")
	k.Kill()
	if err := k.Start(ctx); err != nil {
		p.Err = err.Error()
	}
	tUp := time.Now()
	p.Note = fmt.Sprintf("serving again %.1fs after the kill", tUp.Sub(tKill).Seconds())
	sleep(ctx, o.Phase)
	p.Windows = []*Window{{Name: "before", Start: before, End: tKill}, {Name: "during", Start: tKill, End: tUp}, {Name: "after", Start: tUp, End: time.Now()}}
	before = tUp

	// The kernel server is cut off: to its clients it hangs.
	p = &Phase{Name: fmt.Sprintf("knfsd tap down for %v", o.LinkDown)}
	r.rep.Phases = append(r.rep.Phases, p)
	tDown := time.Now()
	l.logf("filers: fault: knfsd link down for %v", o.LinkDown)
	if err := k.LinkDown(ctx); err != nil {
		p.Err = err.Error()
	}
	// A quarter into the hang, with deliveries and sessions stuck on the
	// cut-off filer, mx1's daemons get SIGTERM (an administrator's
	// restart, a package upgrade): they must still exit within
	// lmtp.shutdown_timeout, and the script's restart must come up and
	// stay up while the filer is away.
	if !r.f.Stub {
		sleep(ctx, o.LinkDown/4)
		term := r.termDuringHang(ctx, r.f.VMs[0])
		sleep(ctx, time.Until(tDown.Add(o.LinkDown)))
		r.checkRestarted(ctx, r.f.VMs[0], term)
		p.Note = term.String()
	}
	sleep(ctx, time.Until(tDown.Add(o.LinkDown)))
	if err := k.LinkUp(ctx); err != nil {
		p.Err = err.Error()
	}
	tLinkUp := time.Now()
	if down := tLinkUp.Sub(tDown); down > o.LinkDown+5*time.Second {
		// A short outage (TestFilers') is held until the SIGTERM step
		// has seen both daemons exit and start again.
		p.Name = fmt.Sprintf("knfsd tap down for %v (%v asked, held for the SIGTERM step)", down.Round(time.Second), o.LinkDown)
	}
	sleep(ctx, o.Phase)
	p.Windows = []*Window{{Name: "before", Start: before, End: tDown}, {Name: "during", Start: tDown, End: tLinkUp}, {Name: "after", Start: tLinkUp, End: time.Now()}}
	before = tLinkUp

	// Mailboxes move between the filers under load.
	p = &Phase{Name: "move mailboxes between filers"}
	r.rep.Phases = append(r.rep.Phases, p)
	switch {
	case o.NoMove:
		p.Skipped = "not asked for (NoMove)"
	case r.f.Mode != "volumes":
		p.Skipped = "the binary has no volumes (front ends run " + r.f.Mode + ")"
	case !hasMove(ctx, filepath.Join(l.Export, "bin", "nfsdrop")):
		p.Skipped = "the nfsdrop binary has no \"maildir move\" command (issue 16's move is on another branch)"
	default:
		tMove := time.Now()
		p.Note, p.Err = r.moveMailboxes(ctx)
		tMoved := time.Now()
		sleep(ctx, o.Phase)
		p.Windows = []*Window{{Name: "before", Start: before, End: tMove}, {Name: "during", Start: tMove, End: tMoved}, {Name: "after", Start: tMoved, End: time.Now()}}
	}
	for _, p := range r.rep.Phases {
		for _, w := range p.Windows {
			r.fill(w)
		}
	}
}

// labShutdownTimeout is lmtp.shutdown_timeout in the lab's configuration
// (the product's default): the bound within which a daemon must exit after
// SIGTERM, hung filer or not.
const labShutdownTimeout = 30 * time.Second

// labStopBound is how long a daemon may take from SIGTERM to exit while a
// filer hangs: lmtp.shutdown_timeout, plus pop3d's 5 s for the sessions
// it closed to give back their mailbox locks (pop3.Server.Shutdown), plus
// 2 s for the process to end and the guest's polling. Below the packaged
// units' TimeoutStopSec (45 s), after which systemd would SIGKILL it.
const labStopBound = labShutdownTimeout + 7*time.Second

// termResult is what became of one VM's daemons after SIGTERM during the
// hang.
type termResult struct {
	Host string
	// MainDone is each daemon's time from SIGTERM until its own code was
	// done (main thread exited); absent when it was not within the wait.
	MainDone map[string]time.Duration
	// Exited is each daemon's time from SIGTERM to exit, as the guest's
	// own clock saw it; absent when it had not exited when the guest
	// stopped waiting (labShutdownTimeout + 30 s).
	Exited map[string]time.Duration
	// Restarted is each daemon's process after the script's restart, and
	// Running whether it was still alive at the end of the hang.
	Restarted map[string]string
	Running   map[string]bool
	// Held counts the threads of daemons still there a second after
	// lmtp.shutdown_timeout by "STATE WCHAN" (their kernel wait).
	Held map[string]int
	Err  string
}

func newTermResult(host string) *termResult {
	return &termResult{Host: host, Exited: map[string]time.Duration{}, MainDone: map[string]time.Duration{},
		Restarted: map[string]string{}, Running: map[string]bool{}, Held: map[string]int{}}
}

func (t *termResult) String() string {
	var parts []string
	for _, d := range []string{"lmtpd", "pop3d"} {
		m, stopped := t.MainDone[d]
		e, gone := t.Exited[d]
		switch {
		case !stopped:
			parts = append(parts, d+" did NOT stop")
		case !gone:
			parts = append(parts, fmt.Sprintf("%s stopped in %.1fs, its process then held by the kernel until the filer answered (threads in uninterruptible waits on it)", d, m.Seconds()))
		case !t.Running[d]:
			parts = append(parts, fmt.Sprintf("%s exited in %.1fs, restart NOT running and listening at link-up", d, e.Seconds()))
		default:
			parts = append(parts, fmt.Sprintf("%s exited in %.1fs, restarted and listening at link-up", d, e.Seconds()))
		}
	}
	s := fmt.Sprintf("SIGTERM on %s during the hang (shutdown_timeout %v, bound %v): %s", t.Host, labShutdownTimeout, labStopBound, strings.Join(parts, "; "))
	if len(t.Held) > 0 {
		var held []string
		for k, n := range t.Held {
			held = append(held, fmt.Sprintf("%d× %s", n, k))
		}
		sort.Strings(held)
		s += "; threads still there after the bound: " + strings.Join(held, ", ")
	}
	if t.Err != "" {
		s += "; " + t.Err
	}
	return s
}

// problems are the ways the SIGTERM check failed: a daemon whose own
// code did not stop within the bound, or one that exited but whose
// restart was not serving. A process held by the kernel after its code
// stopped is not one: no user space can end a thread in an
// uninterruptible wait on a hard mount (its restart waits for the filer).
func (t *termResult) problems() []string {
	var out []string
	if t.Err != "" {
		out = append(out, "SIGTERM during the hang: "+t.Err)
	}
	for _, d := range []string{"lmtpd", "pop3d"} {
		m, stopped := t.MainDone[d]
		_, gone := t.Exited[d]
		switch {
		case !stopped:
			out = append(out, fmt.Sprintf("%s: %s did not stop after SIGTERM while the filer hung", t.Host, d))
		case m > labStopBound:
			out = append(out, fmt.Sprintf("%s: %s took %.1fs to stop after SIGTERM while the filer hung (bound %v)", t.Host, d, m.Seconds(), labStopBound))
		case gone && !t.Running[d]:
			out = append(out, fmt.Sprintf("%s: %s, restarted during the hang, was not running and listening at its end", t.Host, d))
		}
	}
	return out
}

// termCommand sends SIGTERM to the daemons named in /tmp/pid.lmtpd and
// /tmp/pid.pop3d and times, with /proc/uptime, when each one's own code
// was done (its main thread exited: the process is gone, or only a
// zombie leader is left) and when the process was gone. A thread inside
// an uninterruptible wait on the hung filer (waiting for page writeback
// in fsync or close) keeps an exiting process in the kernel until the
// filer answers, whatever user space does, SIGKILL included. It prints
// "exit DAEMON PID START GONE MAINDONE" ("-" for what did not happen
// within wait). Builtins and usleep only, nothing on NFS: it must answer
// while the filer hangs.
//
// After dumpAfter it also prints "task PID/task/TID STATE WCHAN" for every
// thread of a daemon still there: where in the kernel a process that
// outlives its shutdown is held. It stops waiting once both processes
// are gone, or once both mains are done and the threads were listed.
func termCommand(wait, dumpAfter time.Duration) string {
	dumpAt := int(dumpAfter / (100 * time.Millisecond))
	return fmt.Sprintf(`done_() { s=-; while read -r f v _; do [ "$f" = State: ] && s=$v; done </proc/$1/status; [ ! -d /proc/$1 ] || [ "$s" = Z ]; } 2>/dev/null; read -r a </tmp/pid.lmtpd; read -r b </tmp/pid.pop3d; read -r t0 _ </proc/uptime; kill -TERM $a $b; ea=-; eb=-; ma=-; mb=-; n=0; while [ $n -lt %d ]; do read -r t _ </proc/uptime; [ "$ea" = - ] && [ ! -d /proc/$a ] && ea=$t; [ "$eb" = - ] && [ ! -d /proc/$b ] && eb=$t; [ "$ma" = - ] && done_ $a && ma=$t; [ "$mb" = - ] && done_ $b && mb=$t; [ "$ea" != - ] && [ "$eb" != - ] && break; [ "$ma" != - ] && [ "$mb" != - ] && [ $n -gt %d ] && break; if [ $n = %d ]; then for k in /proc/$a/task/* /proc/$b/task/*; do [ -d "$k" ] || continue; w=-; read -r w <$k/wchan; st=-; while read -r f v _; do [ "$f" = State: ] && st=$v; done <$k/status; echo "task ${k#/proc/} $st $w"; done 2>/dev/null; fi; usleep 100000; n=$((n + 1)); done; echo "exit lmtpd $a $t0 $ea $ma"; echo "exit pop3d $b $t0 $eb $mb"`, int(wait/(100*time.Millisecond)), dumpAt, dumpAt)
}

// parseTermOutput reads termCommand's output into r and returns the old
// processes.
func parseTermOutput(out string, r *termResult) map[string]string {
	old := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "task" {
			r.Held[f[2]+" "+f[3]]++
			continue
		}
		if len(f) != 6 || f[0] != "exit" {
			continue
		}
		old[f[1]] = f[2]
		t0, err := strconv.ParseFloat(f[3], 64)
		if err != nil {
			continue
		}
		if t, err := strconv.ParseFloat(f[4], 64); err == nil {
			r.Exited[f[1]] = time.Duration((t - t0) * float64(time.Second))
		}
		if t, err := strconv.ParseFloat(f[5], 64); err == nil {
			r.MainDone[f[1]] = time.Duration((t - t0) * float64(time.Second))
		}
	}
	return old
}

// termDuringHang sends SIGTERM to vm's lmtpd and pop3d and times their
// exits (issue 16: SIGTERM still exits within its bound while a filer
// hangs). The VM script starts each again a second after it exits.
func (r *filersRun) termDuringHang(ctx context.Context, vm *VM) *termResult {
	res := newTermResult(vm.Host)
	wait := labShutdownTimeout + 30*time.Second
	ectx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	r.f.Lab.logf("filers: fault: SIGTERM to %s's lmtpd and pop3d during the hang", vm.Host)
	out, code, err := vm.Exec(ectx, termCommand(wait, labShutdownTimeout+time.Second))
	if err != nil || code != 0 {
		res.Err = fmt.Sprintf("exit %d, %v: %s", code, err, strings.TrimSpace(out))
		return res
	}
	old := parseTermOutput(out, res)
	sleep(ctx, 3*time.Second)
	for _, d := range []string{"lmtpd", "pop3d"} {
		p, _, err := vm.Exec(ctx, "read -r p </tmp/pid."+d+"; echo $p")
		if p = strings.TrimSpace(p); err == nil && p != "" && p != old[d] {
			res.Restarted[d] = p
		}
	}
	return res
}

// daemonPorts are the daemons' listening ports in /proc/net/tcp's hex.
var daemonPorts = map[string]string{"lmtpd": ":0018", "pop3d": ":006E"}

// listeningCommand prints the local address of every listening TCP
// socket (state 0A in /proc/net/tcp), with builtins only.
const listeningCommand = `while read -r _ l _ st _; do [ "$st" = 0A ] && echo "$l"; done </proc/net/tcp; true`

// checkRestarted records whether each restarted daemon is alive and
// listening on its port at the end of the hang: it started while its
// filer was away (the old one exited, so the socket is the new one's).
func (r *filersRun) checkRestarted(ctx context.Context, vm *VM, res *termResult) {
	listening, _, lerr := vm.Exec(ctx, listeningCommand)
	for d, p := range res.Restarted {
		out, code, err := vm.Exec(ctx, "[ -d /proc/"+p+" ] && echo alive; true")
		alive := err == nil && code == 0 && strings.TrimSpace(out) == "alive"
		res.Running[d] = alive && lerr == nil && strings.Contains(listening, daemonPorts[d]+"\n")
	}
	r.rep.Problems = append(r.rep.Problems, res.problems()...)
}

// moveMailboxes moves the first user of each volume to the other volume
// with "nfsdrop maildir move" on mx1, then points every front end's user
// file at the new place (what the command tells the administrator to do).
func (r *filersRun) moveMailboxes(ctx context.Context) (note, errs string) {
	var notes, problems []string
	vm := r.f.VMs[0]
	for i, vol := range FilersVolumes {
		user := r.f.Users[i*r.o.UsersPerVolume]
		to := FilersVolumes[1-i]
		t := time.Now()
		out, code, err := vm.Exec(ctx, fmt.Sprintf("/tmp/nfsdrop maildir move -c /tmp/nfsdrop.toml %s %s", user, to))
		if err != nil || code != 0 {
			problems = append(problems, fmt.Sprintf("move %s %s -> %s: exit %d, %v: %s", user, vol, to, code, err, strings.TrimSpace(out)))
			continue
		}
		notes = append(notes, fmt.Sprintf("%s %s -> %s in %.1fs", user, vol, to, time.Since(t).Seconds()))
		r.f.mu.Lock()
		r.f.VolumeOf[user] = to
		r.f.mu.Unlock()
		for _, v := range r.f.VMs {
			if out, code, err := v.Exec(ctx, moveHomeCommand(user, vol, to, "/tmp/users")); err != nil || code != 0 {
				problems = append(problems, fmt.Sprintf("%s: updating the user file: %v %s", v.Host, err, out))
			}
		}
	}
	return strings.Join(notes, "; "), strings.Join(problems, "; ")
}

// moveHomeCommand is the shell command that points user's home= in the
// passwd-file at volume to instead of from (what "nfsdrop maildir move"
// tells the administrator to change).
func moveHomeCommand(user, from, to, file string) string {
	local, domain, _ := strings.Cut(user, "@")
	return fmt.Sprintf("sed -i 's#^%s:\\(.*\\)home=%s:%s/%s$#%s:\\1home=%s:%s/%s#' %s", user, from, domain, local, user, to, domain, local, file)
}

// fill computes a window's rates and peaks from the samples.
func (r *filersRun) fill(w *Window) {
	r.mu.Lock()
	defer r.mu.Unlock()
	secs := w.End.Sub(w.Start).Seconds()
	w.Acked, w.TempFail, w.OtherDeferred = map[string]float64{}, map[string]int{}, map[string]int{}
	w.Logins, w.Ops, w.PeakThreads = map[string]float64{}, map[string]float64{}, map[string]int{}
	if a, b := r.countAt(w.Start), r.countAt(w.End); a != nil && b != nil {
		for _, v := range FilersVolumes {
			w.Acked[v] = rate(b.Acked[v]-a.Acked[v], secs)
			w.TempFail[v] = b.TempFail[v] - a.TempFail[v]
			w.OtherDeferred[v] = b.Deferred[v] - a.Deferred[v]
		}
	}
	if r.ld != nil {
		logins := map[string]int{}
		for user, n := range r.ld.Rec.LoginsBetween(w.Start, w.End) {
			logins[r.initialVolume(user)] += n
		}
		for _, v := range FilersVolumes {
			w.Logins[v] = rate(logins[v], secs)
		}
	}
	ops := map[string]int{}
	for host, ss := range r.threads {
		var first, last *ThreadSample
		for i := range ss {
			s := &ss[i]
			if s.At.Before(w.Start) || !s.At.Before(w.End) {
				continue
			}
			if first == nil {
				first = s
			}
			last = s
			for k, n := range s.Threads {
				key := strings.TrimSuffix(host, ".test") + " " + k
				if n > w.PeakThreads[key] {
					w.PeakThreads[key] = n
				}
			}
		}
		if first != nil && last != first {
			for k, n := range last.Ops {
				vol, _, _ := strings.Cut(k, ".")
				ops[vol] += n - first.Ops[k]
			}
		}
	}
	for _, v := range FilersVolumes {
		w.Ops[v] = rate(ops[v], secs)
	}
}

// countAt is the last count sample taken at or before t (the first one
// when none was); r.mu is held.
func (r *filersRun) countAt(t time.Time) *countSample {
	var best *countSample
	for i := range r.counts {
		c := &r.counts[i]
		if c.At.After(t) {
			break
		}
		best = c
	}
	if best == nil && len(r.counts) > 0 {
		best = &r.counts[0]
	}
	return best
}

// finishStub checks what the stand-ins left: every VM still answering,
// both volumes still served.
func (r *filersRun) finishStub(ctx context.Context) {
	for _, v := range r.f.VMs {
		if !v.Running() {
			r.rep.Problems = append(r.rep.Problems, v.Host+" is not running after the faults")
		}
	}
	for _, p := range r.rep.Phases {
		if p.Err != "" {
			r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("phase %s: %s", p.Name, p.Err))
		}
	}
	// After the last fault both volumes must be served again.
	if last := r.lastWindow(); last != nil {
		for _, v := range FilersVolumes {
			if last.Ops[v] == 0 {
				r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("no stand-in operation on volume %s after the faults", v))
			}
		}
	}
	for _, v := range r.f.VMs {
		v.Poweroff(ctx)
	}
	if err := r.f.KNFS.Stop(ctx); err != nil {
		r.rep.Problems = append(r.rep.Problems, "knfsd stop: "+err.Error())
	}
}

func (r *filersRun) lastWindow() *Window {
	for i := len(r.rep.Phases) - 1; i >= 0; i-- {
		if ws := r.rep.Phases[i].Windows; len(ws) > 0 {
			return ws[len(ws)-1]
		}
	}
	return nil
}

// finish stops the load, lets Postfix deliver what it holds, drains every
// mailbox over POP3, stops everything, reads both filers' volumes from the
// host and checks every invariant.
func (r *filersRun) finish(ctx context.Context) error {
	f, l, rep := r.f, r.f.Lab, r.rep
	r.ld.Stop()
	for _, p := range rep.Phases {
		if p.Err != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("phase %s: %s", p.Name, p.Err))
		}
	}
	for _, v := range f.VMs {
		if !v.Running() {
			rep.Problems = append(rep.Problems, v.Host+" is not running after the faults")
		}
	}
	deadline := time.Now().Add(3 * time.Minute)
	for r.log.Poll(); r.ld.Outstanding() > 0; r.log.Poll() {
		if time.Now().After(deadline) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%d messages still undelivered 3 minutes after the load", r.ld.Outstanding()))
			break
		}
		f.Postfix.Flush(ctx)
		sleep(ctx, 2*time.Second)
	}
	drain := r.ld.Drain(ctx, r.o.LockStale+60*time.Second)
	if err := f.Shutdown(ctx); err != nil {
		rep.Problems = append(rep.Problems, "shutdown: "+err.Error())
	}
	if err := f.KNFS.Stop(ctx); err != nil {
		rep.Problems = append(rep.Problems, "knfsd stop: "+err.Error())
	}
	kroot, err := f.KNFS.ReadExport(ctx, filepath.Join(l.Dir, "knfsd-export"))
	if err != nil {
		return err
	}
	roots := map[string]string{VolGanesha: filepath.Join(l.Export, "mailg"), VolKNFSD: kroot}
	files, notes, err := loadcheck.ScanMaildirs(f.Users, func(user string) string {
		local, domain, _ := strings.Cut(user, "@")
		return filepath.Join(roots[f.VolumeOf[user]], domain, local, "Maildir")
	})
	if err != nil {
		return err
	}
	rep.Load = loadcheck.Check(r.ld.Rec, r.log, drain, files, loadcheck.CheckOptions{LockStale: r.o.LockStale, LockMargin: 30 * time.Second})
	rep.Load.Notes = append(rep.Load.Notes, notes...)
	if err := r.ld.Rec.Dump(filepath.Join(l.LogDir(), "loadcheck.json")); err != nil {
		l.logf("filers: %v", err)
	}
	return nil
}
