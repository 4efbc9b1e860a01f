package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab/loadcheck"
)

// ScaleOutConfig is the nfsdrop configuration of a scale-out VM: lmtpd and
// pop3d on the VM's address, its own hostname, PROXY protocol from HAProxy
// in the client namespace, and a short lock_stale so that a killed
// machine's locks are recovered within the run. The user file is next to
// it (the VM script copies both to /tmp: the configuration is local, as in
// production, and reading it costs no NFS calls).
func ScaleOutConfig(host, addr string, lockStale time.Duration) string {
	return fmt.Sprintf(`# nfsdrop on lab VM %s, scale-out run (written by contrib/lab)
hostname = "%s"

[log]
level = "warn"

[store]
mail_root = "%s/mail"
mount_marker = ".nfsdrop-mounted"

[userdb]
driver = "passwd-file"
passwd_file = "users"
default_domain = "lab.test"

[lmtp]
listen = ["tcp:%s:24"]
max_connections = 200
# Below the lab Postfix's lmtp_data_done_timeout (60s, postfix.go): a
# delivery held up longer by a hung filer is not published, since Postfix
# has stopped waiting and sends it again.
commit_deadline = "40s"

[pop3]
listen = ["tcp:%s:110"]
proxy_networks = ["%s/32"]
trusted_networks = ["%s/32"]
allow_plaintext = true
lock_stale = "%s"
max_per_ip = 200
auth_fail_delay = "0s"
`, host, host, MountPoint, addr, addr, ClientAddr, ClientAddr, lockStale)
}

// scaleOutScript runs lmtpd and pop3d (one process each) from /tmp, each
// restarted a second after it exits; lab-stop's SIGTERM to the process
// group ends the loops and the daemons.
const scaleOutScript = `#!/bin/sh
# nfsdrop lab scale-out (written by contrib/lab): lmtpd and pop3d.
H=$LAB_HOST M=$LAB_MNT
cp "$M/bin/nfsdrop" /tmp/nfsdrop && cp "$M/conf/$H.toml" /tmp/nfsdrop.toml && cp "$M/conf/users" /tmp/users || exit 1
run() {
	while :; do
		/tmp/nfsdrop "$@" -c /tmp/nfsdrop.toml
		echo "nfsdrop-lab: nfsdrop $1 exited $?"
		sleep 1
	done
}
run lmtpd &
run pop3d &
echo "nfsdrop-lab: daemons started host=$H"
wait
`

// Fault is one scripted fault of a scale-out run.
type Fault struct {
	// At is the time after the start of the load.
	At time.Duration
	// Kind: "kill" (SIGKILL qemu, boot again after For), "link" (the VM's
	// tap down for For), "filer" (SIGKILL ganesha, start again after
	// For), "netem" (loss and delay on the VM's eth0 for For).
	Kind string
	// VM is the machine's number (1-based; not for "filer").
	VM  int
	For time.Duration
	// Loss (percent) and Delay for "netem".
	Loss  float64
	Delay time.Duration
}

func (f Fault) String() string {
	switch f.Kind {
	case "filer":
		return fmt.Sprintf("filer: ganesha SIGKILLed, restarted after %v", f.For)
	case "kill":
		return fmt.Sprintf("mx%d: qemu SIGKILLed, booted again after %v", f.VM, f.For)
	case "link":
		return fmt.Sprintf("mx%d: link down for %v", f.VM, f.For)
	case "netem":
		return fmt.Sprintf("mx%d: netem loss %g%% delay %v for %v", f.VM, f.Loss, f.Delay, f.For)
	}
	return f.Kind
}

// DefaultFaults is the deterministic schedule of a run of load seconds on
// vms machines: loss and delay, a machine killed during deliveries and
// sessions (and booted again), a machine cut off from the NFS server for
// 8 s, the NFS server killed and restarted, more loss and delay, a second
// machine killed. Faults never overlap.
func DefaultFaults(vms int, load time.Duration) []Fault {
	at := func(f float64) time.Duration { return time.Duration(f * float64(load)).Round(time.Second) }
	last := vms
	other := 1
	if vms >= 3 {
		other = 2
	}
	return []Fault{
		{At: at(0.07), Kind: "netem", VM: 1, For: at(0.10), Loss: 10, Delay: 40 * time.Millisecond},
		{At: at(0.20), Kind: "kill", VM: last, For: 2 * time.Second},
		{At: at(0.42), Kind: "link", VM: other, For: 8 * time.Second},
		{At: at(0.55), Kind: "filer", For: 6 * time.Second},
		{At: at(0.66), Kind: "kill", VM: 1, For: 2 * time.Second},
		{At: at(0.85), Kind: "netem", VM: vms, For: at(0.10), Loss: 5, Delay: 100 * time.Millisecond},
	}
}

// ScaleOutOptions configures RunScaleOut.
type ScaleOutOptions struct {
	// VMs is the number of nfsdrop machines (default 3).
	VMs int
	// Users is the number of mailboxes (default 8).
	Users int
	// Load is how long messages are submitted and POP3 clients run
	// (default 90 s).
	Load time.Duration
	// NFSDrop is a static nfsdrop binary; "" builds one.
	NFSDrop string
	// MountOpts are the VMs' NFS mount options (default DefaultMountOpts).
	MountOpts string
	// Faults is the fault schedule; nil means DefaultFaults, and NoFaults
	// runs none.
	Faults   []Fault
	NoFaults bool
	// LockStale is pop3.lock_stale (default 30 s, the least allowed).
	LockStale time.Duration
	// Rate is the submission rate (messages/s; 0: as fast as the
	// outstanding-message limit allows). Load tunes the rest.
	Rate float64
	Tune func(*loadcheck.Config)
}

// FaultEvent is a fault as it happened.
type FaultEvent struct {
	Fault
	Start, End time.Time
	// Offset is Start relative to the start of the load.
	Offset time.Duration
	Err    string
	Note   string
}

// VMStat is one VM's NFS client counters at the end of a run (since its
// last boot).
// LockRecovery is a mailbox whose session died with its machine: when the
// machine was killed and when a login to the mailbox succeeded again (the
// stale lock taken over).
type LockRecovery struct {
	User, Host        string
	Killed, Recovered time.Time
}

type VMStat struct {
	Host                          string
	Boots                         int
	Ops, Retransmissions, Connect int64
	// ClockSkew is the VM's clock minus the host's, at the end.
	ClockSkew time.Duration
}

// ScaleOutReport is what RunScaleOut did and found.
type ScaleOutReport struct {
	VMs    int
	Load   *loadcheck.Report
	Faults []FaultEvent
	VM     []VMStat
	Locks  []LockRecovery
	// Problems are failures of the run itself (not of nfsdrop's
	// promises): a fault that could not be applied, a queue that did not
	// empty.
	Problems              []string
	Setup, Drain, Total   time.Duration
	LoadBefore, LoadAfter string
	Cores                 int
	MountOpts             string
}

// Failed reports whether an invariant was violated or the run itself
// went wrong.
func (r *ScaleOutReport) Failed() bool {
	return r.Load == nil || r.Load.Violations() > 0 || len(r.Problems) > 0
}

func (r *ScaleOutReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nfsdrop scale-out: %d VMs (lmtpd + pop3d each) behind HAProxy, Postfix delivering over LMTP, one NFSv%s export (%s)\n", r.VMs, NFSVersionOf(r.MountOpts), r.MountOpts)
	fmt.Fprintf(&b, "time: setup %v, load %v, drain and checks %v, total %v; host %d cores, load average %s before, %s after\n",
		r.Setup.Round(time.Second), r.loadDuration().Round(time.Second), r.Drain.Round(time.Second), r.Total.Round(time.Second), r.Cores, r.LoadBefore, r.LoadAfter)
	if len(r.Faults) > 0 {
		b.WriteString("faults:\n")
		for _, f := range r.Faults {
			fmt.Fprintf(&b, "  +%5.1fs  %s (took %.1fs)", f.Offset.Seconds(), f.Fault, f.End.Sub(f.Start).Seconds())
			if f.Note != "" {
				fmt.Fprintf(&b, "; %s", f.Note)
			}
			if f.Err != "" {
				fmt.Fprintf(&b, "; ERROR %s", f.Err)
			}
			b.WriteString("\n")
		}
	} else {
		b.WriteString("faults: none\n")
	}
	for _, lr := range r.Locks {
		if lr.Recovered.IsZero() {
			fmt.Fprintf(&b, "  lock of %s (session on %s when it was killed): never recovered\n", lr.User, lr.Host)
		} else {
			fmt.Fprintf(&b, "  lock of %s (session on %s when it was killed): login succeeded again %.1fs after the kill\n", lr.User, lr.Host, lr.Recovered.Sub(lr.Killed).Seconds())
		}
	}
	for _, v := range r.VM {
		fmt.Fprintf(&b, "  %s: %d boots; since the last: %d NFS calls, %d RPC retransmissions, %d TCP connects to the server; clock %+.2fs from the host's\n",
			v.Host, v.Boots, v.Ops, v.Retransmissions, v.Connect, v.ClockSkew.Seconds())
	}
	if r.Load != nil {
		b.WriteString(r.Load.String())
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "run problem: %s\n", p)
	}
	return b.String()
}

func (r *ScaleOutReport) loadDuration() time.Duration {
	if r.Load == nil {
		return 0
	}
	return r.Load.Duration
}

// LabUser is the address of user n (1-based): u1@lab.test.
func LabUser(n int) string { return fmt.Sprintf("u%d@lab.test", n) }

// LabMaildir is the host path of a lab user's Maildir in the export.
func (l *Lab) LabMaildir(user string) string {
	local, domain, _ := strings.Cut(user, "@")
	return filepath.Join(l.Export, "mail", domain, local, "Maildir")
}

// ScaleOutLab is a running scale-out setup: the NFS server, VMs with
// lmtpd and pop3d, HAProxy and Postfix. RunScaleOut and the measurements
// build on it.
type ScaleOutLab struct {
	// OnKill, when set, is called right after a "kill" fault killed a VM.
	OnKill  func(v *VM, at time.Time)
	Lab     *Lab
	VMs     []*VM
	HAProxy *HAProxy
	Postfix *Postfix
	Users   []string
}

// StartScaleOut lays out the export (binary, users, configurations, the
// VM script), starts the NFS server, n VMs, HAProxy and (when postfix)
// Postfix, and waits until HAProxy sees every server UP. The lab must be
// new. prepare, when not nil, may add files to the export before the NFS
// server starts.
func StartScaleOut(ctx context.Context, l *Lab, n, users int, binary, mountOpts string, lockStale time.Duration, postfix bool, prepare func() error) (*ScaleOutLab, error) {
	if err := l.PrepareNFSDrop(ctx, binary, n, users); err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		host := fmt.Sprintf("mx%d.test", i)
		if err := os.WriteFile(filepath.Join(l.Export, "conf", host+".toml"), []byte(ScaleOutConfig(host, VMAddr(i), lockStale)), 0o644); err != nil {
			return nil, err
		}
	}
	script, err := l.WriteScript("scaleout.sh", scaleOutScript)
	if err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(); err != nil {
			return nil, err
		}
	}
	s := &ScaleOutLab{Lab: l}
	for u := 1; u <= users; u++ {
		s.Users = append(s.Users, LabUser(u))
	}
	if err := l.NFS.Start(ctx); err != nil {
		return nil, err
	}
	var pf *PostfixOptions
	if postfix {
		pf = &PostfixOptions{}
	}
	err = s.startFrontEnds(ctx, n, func(int) VMConfig {
		return VMConfig{Script: script, MountOpts: mountOpts, Grace: 10 * time.Second}
	}, pf)
	return s, err
}

// startFrontEnds boots n VMs (cfg gives each one's configuration), waits
// until each has mounted its file systems, starts HAProxy in front of them
// and waits until it sees every server UP, then (when pf is not nil)
// Postfix delivering to HAProxy's LMTP port (Transport and Concurrency
// default to that and 12).
func (s *ScaleOutLab) startFrontEnds(ctx context.Context, n int, cfg func(i int) VMConfig, pf *PostfixOptions) error {
	if err := s.bootFrontEnds(ctx, n, cfg); err != nil {
		return err
	}
	return s.startBalancer(ctx, pf)
}

// bootFrontEnds boots n VMs and waits until each has mounted its file
// systems.
func (s *ScaleOutLab) bootFrontEnds(ctx context.Context, n int, cfg func(i int) VMConfig) error {
	l := s.Lab
	vms, err := l.StartVMs(ctx, n, cfg)
	s.VMs = vms
	if err != nil {
		return err
	}
	for _, v := range vms {
		d, err := v.WaitReady(ctx, 3*time.Minute)
		if err != nil {
			return err
		}
		l.logf("vm %s: booted and mounted in %v", v.Host, d.Round(10*time.Millisecond))
	}
	return nil
}

// startBalancer starts HAProxy in front of the VMs, waits until it sees
// every server UP, then (pf not nil) starts Postfix.
func (s *ScaleOutLab) startBalancer(ctx context.Context, pf *PostfixOptions) error {
	l := s.Lab
	var err error
	if s.HAProxy, err = l.StartHAProxy(ctx, HAProxyOptions{VMs: s.VMs}); err != nil {
		return err
	}
	if err := s.HAProxy.WaitUp(ctx, 2*time.Minute); err != nil {
		return fmt.Errorf("%v; consoles:\n%s", err, s.consoles(2000))
	}
	if pf != nil {
		o := *pf
		if o.Transport == "" {
			o.Transport = "lmtp:inet:[" + ClientAddr + "]:24"
		}
		if o.Concurrency == 0 {
			o.Concurrency = 12
		}
		if s.Postfix, err = l.StartPostfix(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

func (s *ScaleOutLab) consoles(n int) string {
	var b strings.Builder
	for _, v := range s.VMs {
		fmt.Fprintf(&b, "--- %s\n%s\n", v.Host, tail([]byte(v.Console()), n))
	}
	return b.String()
}

// Dial connects from the client namespace.
func (s *ScaleOutLab) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return s.Lab.Net.Dial(ctx, s.Lab.Net.Client, network, addr)
}

// Shutdown powers the VMs off (their daemons get SIGTERM) and stops
// HAProxy, Postfix and the NFS server, so that the export can be read.
func (s *ScaleOutLab) Shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.VMs))
	for i, v := range s.VMs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = v.Poweroff(ctx) }()
	}
	wg.Wait()
	if s.Postfix != nil {
		s.Postfix.Stop()
	}
	if s.HAProxy != nil {
		s.HAProxy.Stop()
	}
	if err := s.Lab.NFS.Stop(); err != nil {
		return err
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// RunScaleOut is the scale-out proof: VMs each running lmtpd and pop3d
// behind HAProxy, Postfix delivering numbered, checksummed messages
// through it, POP3 clients that keep or delete mail through it, faults on
// a fixed schedule; then a final POP3 drain, the export read with the NFS
// server stopped, and every invariant checked (see loadcheck.Check).
func RunScaleOut(ctx context.Context, l *Lab, o ScaleOutOptions) (*ScaleOutReport, error) {
	if o.VMs == 0 {
		o.VMs = 3
	}
	if o.Users == 0 {
		o.Users = 8
	}
	if o.Load == 0 {
		o.Load = 90 * time.Second
	}
	if o.LockStale == 0 {
		o.LockStale = 30 * time.Second
	}
	if o.MountOpts == "" {
		o.MountOpts = DefaultMountOpts
	}
	faults := o.Faults
	if faults == nil && !o.NoFaults {
		faults = DefaultFaults(o.VMs, o.Load)
	}
	if o.NoFaults {
		faults = nil
	}
	rep := &ScaleOutReport{VMs: o.VMs, LoadBefore: loadavg(), Cores: runtime.NumCPU(), MountOpts: o.MountOpts}
	t0 := time.Now()
	s, err := StartScaleOut(ctx, l, o.VMs, o.Users, o.NFSDrop, o.MountOpts, o.LockStale, true, nil)
	if err != nil {
		return nil, err
	}
	rep.Setup = time.Since(t0)

	mlog := loadcheck.NewMaillog(s.Postfix.LogFile)
	stopLog := make(chan struct{})
	logDone := make(chan struct{})
	go func() { mlog.Follow(stopLog, 250*time.Millisecond); close(logDone) }()
	defer func() {
		select {
		case <-stopLog:
		default:
			close(stopLog)
		}
		<-logDone
	}()
	cfg := loadcheck.Config{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.Net.Dial(ctx, l.Net.Client, network, addr)
		},
		SMTPAddr: fmt.Sprintf("127.0.0.1:%d", s.Postfix.SMTPPort),
		POP3Addr: s.HAProxy.POP3Addr,
		Users:    s.Users, Password: "pw",
		Run:  l.ID,
		Rate: o.Rate,
		Log:  mlog,
		Seed: 1,
		Logf: l.logf,
	}
	if o.Tune != nil {
		o.Tune(&cfg)
	}
	ld, err := loadcheck.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// A killed machine's sessions leave their locks behind: probe those
	// mailboxes until a login succeeds elsewhere.
	var probes sync.WaitGroup
	var probeMu sync.Mutex
	s.OnKill = func(v *VM, at time.Time) {
		for _, u := range ld.Rec.LoggedIn(v.Host) {
			probes.Add(1)
			go func() {
				defer probes.Done()
				ok := ld.Probe(ctx, u, o.LockStale+90*time.Second)
				probeMu.Lock()
				rep.Locks = append(rep.Locks, LockRecovery{User: u, Host: v.Host, Killed: at, Recovered: ok})
				probeMu.Unlock()
			}()
		}
	}
	loadStart := time.Now()
	l.logf("scale-out: load started (%v, %d faults)", o.Load, len(faults))

	// Faults, in order, each at its time.
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		for _, f := range faults {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(loadStart.Add(f.At))):
			}
			ev := s.applyFault(ctx, f)
			ev.Offset = ev.Start.Sub(loadStart)
			rep.Faults = append(rep.Faults, ev)
		}
	}()
	progress := time.NewTicker(15 * time.Second)
	end := time.After(o.Load)
wait:
	for {
		select {
		case <-ctx.Done():
			ld.Stop()
			return nil, ctx.Err()
		case <-end:
			break wait
		case <-progress.C:
			sent, deferred, _ := mlog.Counts()
			okN, _ := ld.Submitted()
			l.logf("scale-out: +%.0fs submitted %d, delivered %d, deferred %d, POP3 sessions %d", time.Since(loadStart).Seconds(), okN, sent, deferred, len(ld.Rec.Sessions()))
		}
	}
	progress.Stop()
	tEnd := time.Now()
	ld.Stop()
	l.logf("scale-out: load stopped; sessions ended in %v", time.Since(tEnd).Round(100*time.Millisecond))
	<-faultsDone
	probes.Wait()
	for _, lr := range rep.Locks {
		if lr.Recovered.IsZero() {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: locked by a session on %s, killed at %s: no login succeeded afterwards", lr.User, lr.Host, lr.Killed.Format("15:04:05")))
		} else if d := lr.Recovered.Sub(lr.Killed); d > o.LockStale+30*time.Second {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: locked by a session on %s, killed: recovered only after %v (lock_stale %v)", lr.User, lr.Host, d.Round(time.Second), o.LockStale))
		}
	}
	for _, f := range rep.Faults {
		if f.Err != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("fault %s: %s", f.Fault, f.Err))
		}
	}
	// Every VM must be back: a fault left none behind.
	for _, v := range s.VMs {
		if !v.Running() {
			rep.Problems = append(rep.Problems, v.Host+" is not running after the faults")
		}
	}
	if err := s.HAProxy.WaitUp(ctx, 2*time.Minute); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}

	// Let Postfix deliver what it has.
	tDrain := time.Now()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		mlog.Poll()
		n := ld.Outstanding()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%d messages still undelivered 3 minutes after the load", n))
			break
		}
		s.Postfix.Flush(ctx)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	l.logf("scale-out: Postfix queue empty after %v; final POP3 drain", time.Since(tDrain).Round(100*time.Millisecond))
	drain := ld.Drain(ctx, o.LockStale+60*time.Second)
	for _, v := range s.VMs {
		if ms, err := v.Mountstats(ctx); err == nil {
			st := VMStat{Host: v.Host, Boots: v.Boots(), Ops: ms.TotalOps(), Retransmissions: ms.Retransmissions(), Connect: ms.XprtConnects}
			st.ClockSkew, _ = v.ClockSkew(ctx)
			rep.VM = append(rep.VM, st)
		} else {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: mountstats: %v", v.Host, err))
		}
	}
	if err := s.Shutdown(ctx); err != nil {
		rep.Problems = append(rep.Problems, "shutdown: "+err.Error())
	}
	close(stopLog)
	<-logDone
	files, notes, err := loadcheck.ScanMaildirs(s.Users, l.LabMaildir)
	if err != nil {
		return nil, err
	}
	rep.Load = loadcheck.Check(ld.Rec, mlog, drain, files, loadcheck.CheckOptions{LockStale: o.LockStale, LockMargin: 30 * time.Second})
	if err := ld.Rec.Dump(filepath.Join(l.LogDir(), "loadcheck.json")); err != nil {
		l.logf("scale-out: %v", err)
	}
	rep.Load.Notes = append(rep.Load.Notes, notes...)
	rep.Drain = time.Since(tDrain)
	rep.Total = time.Since(t0)
	rep.LoadAfter = loadavg()
	sort.SliceStable(rep.Faults, func(i, j int) bool { return rep.Faults[i].Start.Before(rep.Faults[j].Start) })
	return rep, nil
}

// applyFault applies one fault and undoes it after f.For.
func (s *ScaleOutLab) applyFault(ctx context.Context, f Fault) (ev FaultEvent) {
	ev = FaultEvent{Fault: f, Start: time.Now()}
	defer func() { ev.End = time.Now() }()
	l := s.Lab
	var v *VM
	if f.Kind != "filer" {
		if f.VM < 1 || f.VM > len(s.VMs) {
			ev.Err = fmt.Sprintf("no VM %d", f.VM)
			return ev
		}
		v = s.VMs[f.VM-1]
	}
	l.logf("fault: %s", f)
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch f.Kind {
	case "kill":
		v.Kill()
		if s.OnKill != nil {
			s.OnKill(v, time.Now())
		}
		sleep(f.For)
		if err := v.Start(ctx); err != nil {
			ev.Err = err.Error()
			break
		}
		d, err := v.WaitReady(ctx, 3*time.Minute)
		if err != nil {
			ev.Err = err.Error()
			break
		}
		ev.Note = fmt.Sprintf("booted and mounted again in %.1fs", d.Seconds())
	case "link":
		if err := v.LinkDown(ctx); err != nil {
			ev.Err = err.Error()
			break
		}
		sleep(f.For)
		if err := v.LinkUp(ctx); err != nil {
			ev.Err = err.Error()
		}
	case "filer":
		l.NFS.Kill()
		sleep(f.For)
		t := time.Now()
		if err := l.NFS.Start(ctx); err != nil {
			ev.Err = err.Error()
			break
		}
		ev.Note = fmt.Sprintf("ganesha serving again after %.1fs", time.Since(t).Seconds())
	case "netem":
		if err := v.Netem(ctx, f.Loss, f.Delay); err != nil {
			ev.Err = err.Error()
			break
		}
		before, _ := v.Mountstats(ctx)
		sleep(f.For)
		after, _ := v.Mountstats(ctx)
		if err := v.Netem(ctx, 0, 0); err != nil {
			ev.Err = err.Error()
		}
		if before != nil && after != nil {
			d := after.Sub(before)
			ev.Note = fmt.Sprintf("%d NFS calls meanwhile, %d RPC retransmissions, %d reconnects", d.TotalOps(), d.Retransmissions(), d.XprtConnects)
		}
	default:
		ev.Err = "unknown fault kind " + f.Kind
	}
	return ev
}
