package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab/loadcheck"
)

// CallsOptions configures RunCalls.
type CallsOptions struct {
	// Versions are the NFS versions measured, one after the other on the
	// same VM and export (default "3" and "4.1"; see MountOptsFor).
	Versions []string
	// MountExtra are the mount options beside the version (default
	// SiteMountOpts, what docs/nfs.md recommends).
	MountExtra string
	// Messages is the number of messages delivered, then retrieved and
	// deleted, and of bare loop files (default 300), of Size bytes
	// (default 2048).
	Messages, Size int
	// RepeatLogins are counted back to back (default 20); SpacedLogins
	// (default 5) each after Spacing (default 4 s, longer than actimeo=3:
	// the attribute cache has expired).
	RepeatLogins, SpacedLogins int
	Spacing                    time.Duration
	// Conns is the number of LMTP connections, and of bare loop threads,
	// of the parallel rate measurement (default 4), RateSeconds long
	// (default 15).
	Conns, RateSeconds int
	// Delay is added to every round trip to the filer for the second
	// rate measurement (default 2 ms; negative: none), with DelayMessages
	// delivered one by one (default 100).
	Delay         time.Duration
	DelayMessages int
	// NFSDrop is a static nfsdrop binary; "" builds one.
	NFSDrop string
	// Trace names guest kernel tracepoints ("nfs4:nfs4_getattr") recorded
	// with their kernel stacks during the counted deliveries, repeat
	// logins and bare loop: which system call sent each of those NFS calls. The stacks,
	// counted, are in CallsVersion.Traces. Tracing slows the guest: the
	// rates of a traced run are not comparable.
	Trace []string
	// Probe, when set, runs "bareloop -probe" after the counted bare loop:
	// the GETATTRs of each stat variant on the mail root, the mount
	// marker and the bare loop's new/ (logged).
	Probe bool
	// Owned gives the lab's users their own uid and gid (2001, 2002, ...)
	// in the user database, so that lmtpd, running as root, delivers for
	// another owner (the production case: the message must become the
	// user's; before issue 15 a chown, one SETATTR per delivery).
	Owned bool
	// CountOnly skips the rate measurements (parallel and filer far).
	CountOnly bool
}

func (o *CallsOptions) defaults() {
	if len(o.Versions) == 0 {
		o.Versions = []string{"3", "4.1"}
	}
	if o.MountExtra == "" {
		o.MountExtra = SiteMountOpts
	}
	if o.Messages == 0 {
		o.Messages = 300
	}
	if o.Size == 0 {
		o.Size = 2048
	}
	if o.RepeatLogins == 0 {
		o.RepeatLogins = 20
	}
	if o.SpacedLogins == 0 {
		o.SpacedLogins = 5
	}
	if o.Spacing == 0 {
		o.Spacing = 4 * time.Second
	}
	if o.Conns == 0 {
		o.Conns = 4
	}
	if o.RateSeconds == 0 {
		o.RateSeconds = 15
	}
	if o.Delay == 0 {
		o.Delay = 2 * time.Millisecond
	}
	if o.DelayMessages == 0 {
		o.DelayMessages = 100
	}
}

// CallsPhase is one counted measurement: the NFS calls the VM made, the
// units done (deliveries, logins, messages, files) and how long it took.
type CallsPhase struct {
	Ops     *MountStats
	Units   int64
	Seconds float64
	Problem string
}

// Rate is units per second.
func (p CallsPhase) Rate() float64 { return rate(int(p.Units), p.Seconds) }

// Per formats the calls per unit: "7.1 / 5.0" (total / mutating, NFSv4
// OPENs apart).
func (p CallsPhase) Per() string {
	if p.Problem != "" && p.Units == 0 {
		return "– (" + p.Problem + ")"
	}
	return p.Ops.CallsPer(p.Units)
}

// CallsRates are the rates on one link to the filer.
type CallsRates struct {
	// Delay is what was added to each round trip to the filer (0: the
	// lab's own link).
	Delay time.Duration
	// Deliver and Bare are one delivery or bare file at a time (one LMTP
	// connection, one thread); Logins are POP3 logins back to back by one
	// client.
	Deliver, Bare, Logins CallsPhase
	// ParDeliver and ParBare are Conns connections / threads at once.
	ParDeliver CallsPhase
	ParBare    CallsPhase
}

// CallsVersion is what RunCalls measured on one NFS version.
type CallsVersion struct {
	Version, MountOpts string
	// MountLine is the mount as the VM's /proc/mounts shows it.
	MountLine string
	// Idle is 5 s of nothing: the calls the setup makes by itself (load
	// balancer checks, NFSv4 lease renewal), per second.
	Idle CallsPhase
	// Deliver: Messages deliveries over one LMTP connection; RepeatLogin:
	// logins back to back (USER, PASS, UIDL, QUIT) on the unchanged
	// mailbox of Messages messages; SpacedLogin: logins Spacing apart;
	// Fetch: one session retrieving and deleting every message; Bare: the
	// bare loop making Messages files.
	Deliver, RepeatLogin, SpacedLogin, Fetch, Bare CallsPhase
	Rates                                          []CallsRates
	Problems                                       []string
	// Traces are the kernel stacks of the traced events (Options.Trace)
	// per phase ("deliveries", "repeat logins", "bare loop"), most
	// frequent first.
	Traces map[string][]TracedStack
}

// CallsReport is what RunCalls measured.
type CallsReport struct {
	Options               CallsOptions
	Versions              []*CallsVersion
	LoadBefore, LoadAfter string
	Cores                 int
	Total                 time.Duration
}

// RunCalls counts, from /proc/self/mountstats on one VM (a real Linux NFS
// client), the NFS calls of nfsdrop per delivery, per repeat POP3 login
// back to back and with the attribute cache expired, and per retrieved
// and deleted message, and the bare Maildir loop's per file, on each of
// o.Versions; and the delivery, login and bare loop rates on the lab's
// link and with o.Delay added to every round trip to the filer. One user,
// lmtpd and pop3d behind HAProxy. The lab must be new.
func RunCalls(ctx context.Context, l *Lab, o CallsOptions) (*CallsReport, error) {
	o.defaults()
	rep := &CallsReport{Options: o, LoadBefore: loadavg(), Cores: runtime.NumCPU()}
	t0 := time.Now()
	opts := make([]string, len(o.Versions))
	for i, v := range o.Versions {
		var err error
		if opts[i], err = MountOptsFor(v, o.MountExtra); err != nil {
			return nil, err
		}
	}
	prepare := func() error {
		if o.Owned {
			// RunCalls has one user, u1.
			if err := os.WriteFile(filepath.Join(l.Export, "conf", "users"), []byte("u1@lab.test:{PLAIN}pw:2001:2001::::\n"), 0o644); err != nil {
				return err
			}
		}
		return l.GoBuild(ctx, "./contrib/lab/cmd/bareloop", filepath.Join(l.Export, "bin", "bareloop"))
	}
	s, err := StartScaleOut(ctx, l, 1, 1, o.NFSDrop, opts[0], 30*time.Second, false, prepare)
	if err != nil {
		return nil, err
	}
	vm := s.VMs[0]
	for i, ver := range o.Versions {
		if i > 0 {
			if err := s.reboot(ctx, vm, opts[i]); err != nil {
				return nil, err
			}
		}
		if _, code, err := vm.Exec(ctx, "cp "+MountPoint+"/bin/bareloop /tmp/bareloop"); err != nil || code != 0 {
			return nil, fmt.Errorf("lab: %s: copy bareloop: exit %d %v", vm.Host, code, err)
		}
		cv := &CallsVersion{Version: ver, MountOpts: opts[i]}
		out, _, err := vm.Exec(ctx, "grep ' "+MountPoint+" ' /proc/mounts")
		if err != nil {
			return nil, err
		}
		cv.MountLine = strings.TrimSpace(out)
		l.logf("calls: NFS %s: %s", ver, cv.MountLine)
		if err := s.measureCalls(ctx, vm, o, cv); err != nil {
			return nil, err
		}
		rep.Versions = append(rep.Versions, cv)
	}
	if err := s.Shutdown(ctx); err != nil {
		return nil, err
	}
	rep.Total = time.Since(t0)
	rep.LoadAfter = loadavg()
	return rep, nil
}

// reboot powers vm off and boots it again with mount options opts, then
// waits until HAProxy sees it UP.
func (s *ScaleOutLab) reboot(ctx context.Context, vm *VM, opts string) error {
	if err := vm.Poweroff(ctx); err != nil {
		return err
	}
	vm.Config.MountOpts = opts
	if err := vm.Start(ctx); err != nil {
		return err
	}
	d, err := vm.WaitReady(ctx, 3*time.Minute)
	if err != nil {
		return err
	}
	s.Lab.logf("vm %s: booted and mounted (%s) in %v", vm.Host, opts, d.Round(10*time.Millisecond))
	return s.balance(ctx, []*VM{vm})
}

// measureCalls runs every measurement of one version on vm.
func (s *ScaleOutLab) measureCalls(ctx context.Context, vm *VM, o CallsOptions, cv *CallsVersion) error {
	l := s.Lab
	user := s.Users[0]
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return l.Net.Dial(ctx, l.Net.Client, network, addr)
	}
	vms := []*VM{vm}
	problem := func(format string, args ...any) {
		p := fmt.Sprintf(format, args...)
		cv.Problems = append(cv.Problems, p)
		l.logf("calls: NFS %s: PROBLEM %s", cv.Version, p)
	}
	// phase measures f, which returns the units it did.
	phase := func(name string, f func() (int64, string)) (CallsPhase, error) {
		var p CallsPhase
		t := time.Now()
		ops, _, err := s.measure(ctx, vms, func() loadcheck.BenchResult {
			p.Units, p.Problem = f()
			p.Seconds = time.Since(t).Seconds()
			return loadcheck.BenchResult{}
		})
		p.Ops = ops
		if p.Problem != "" {
			problem("%s: %s", name, p.Problem)
		}
		if err == nil && ops != nil {
			l.logf("calls: NFS %s: %s: %d in %.1fs, %s calls each", cv.Version, name, p.Units, p.Seconds, p.Per())
		}
		return p, err
	}
	deliver := func(n int) func() (int64, string) {
		return func() (int64, string) {
			got, err := loadcheck.LMTPDeliver(ctx, dial, s.HAProxy.LMTPAddr, user, n, o.Size)
			return int64(got), errString(err)
		}
	}
	logins := func(n int, want int) func() (int64, string) {
		return func() (int64, string) {
			for i := 0; i < n; i++ {
				listed, _, err := loadcheck.Login(ctx, dial, s.HAProxy.POP3Addr, user, "pw")
				if err != nil {
					return int64(i), err.Error()
				}
				if want >= 0 && listed != want {
					return int64(i), fmt.Sprintf("login listed %d messages, want %d", listed, want)
				}
			}
			return int64(n), ""
		}
	}
	fetch := func() (int64, string) {
		got, err := loadcheck.FetchAll(ctx, dial, s.HAProxy.POP3Addr, user, "pw", true)
		return int64(got), errString(err)
	}
	bare := func(tag string, files, threads, seconds int) func() (int64, string) {
		return func() (int64, string) {
			cmd := fmt.Sprintf("/tmp/bareloop -dir %s/bare/%s-v%s-%s -threads %d -seconds %d", MountPoint, vm.Host, cv.Version, tag, threads, seconds)
			if files > 0 {
				cmd += fmt.Sprintf(" -files %d", files)
			}
			out, code, err := vm.Exec(ctx, cmd)
			m := bareRE.FindStringSubmatch(out)
			if err != nil || code != 0 || m == nil {
				return 0, fmt.Sprintf("exit %d %v %q", code, err, out)
			}
			n, _ := strconv.ParseInt(m[1], 10, 64)
			return n, ""
		}
	}
	var err error
	// Warm up: the Maildir made, lmtpd's and pop3d's caches filled, the
	// mailbox emptied again.
	// The first connections may still meet a daemon that is starting
	// (HAProxy's check saw the port, not the daemon ready): try again.
	for try := 1; ; try++ {
		_, msg := deliver(10)()
		if msg == "" {
			break
		}
		if try == 5 {
			return fmt.Errorf("lab: warm-up delivery: %s; console:\n%s", msg, tail([]byte(vm.Console()), 2000))
		}
		l.logf("calls: NFS %s: warm-up delivery: %s; again", cv.Version, msg)
		sleepCtx(ctx, 3*time.Second)
	}
	for try := 1; ; try++ {
		_, msg := logins(1, -1)()
		if msg == "" {
			break
		}
		if try == 5 {
			return fmt.Errorf("lab: warm-up login: %s", msg)
		}
		l.logf("calls: NFS %s: warm-up login: %s; again", cv.Version, msg)
		sleepCtx(ctx, 3*time.Second)
	}
	if _, msg := fetch(); msg != "" {
		return fmt.Errorf("lab: warm-up fetch: %s", msg)
	}
	if cv.Idle, err = phase("idle 5 s", func() (int64, string) { sleepCtx(ctx, 5*time.Second); return 5, "" }); err != nil {
		return err
	}
	if err := s.traceStart(ctx, vm, o.Trace); err != nil {
		return err
	}
	if cv.Deliver, err = phase("deliveries", deliver(o.Messages)); err != nil {
		return err
	}
	if err := s.traceCollect(ctx, vm, o.Trace, cv, "deliveries", cv.Deliver.Units); err != nil {
		return err
	}
	// The first login after the deliveries lists new/ again; the
	// repeat logins find the listing unchanged.
	if _, msg := logins(1, o.Messages)(); msg != "" {
		problem("first login: %s", msg)
	}
	if err := s.traceStart(ctx, vm, o.Trace); err != nil {
		return err
	}
	if cv.RepeatLogin, err = phase("repeat logins back to back", logins(o.RepeatLogins, o.Messages)); err != nil {
		return err
	}
	if err := s.traceCollect(ctx, vm, o.Trace, cv, "repeat logins", cv.RepeatLogin.Units); err != nil {
		return err
	}
	cv.SpacedLogin = CallsPhase{Ops: nil}
	for i := 0; i < o.SpacedLogins; i++ {
		sleepCtx(ctx, o.Spacing)
		p, err := phase(fmt.Sprintf("login %v after the last", o.Spacing), logins(1, o.Messages))
		if err != nil {
			return err
		}
		cv.SpacedLogin.Ops = p.Ops.Add(cv.SpacedLogin.Ops)
		cv.SpacedLogin.Units += p.Units
		cv.SpacedLogin.Seconds += p.Seconds
		if p.Problem != "" {
			cv.SpacedLogin.Problem = p.Problem
		}
	}
	if cv.Fetch, err = phase("retrieve and delete", fetch); err != nil {
		return err
	}
	if err := s.traceStart(ctx, vm, o.Trace); err != nil {
		return err
	}
	if cv.Bare, err = phase("bare loop", bare("count", o.Messages, 1, 600)); err != nil {
		return err
	}
	if err := s.traceCollect(ctx, vm, o.Trace, cv, "bare loop", cv.Bare.Units); err != nil {
		return err
	}
	if o.Probe {
		paths := fmt.Sprintf("%[1]s/mail,%[1]s/mail/.nfsdrop-mounted,%[1]s/bare/%[2]s-v%[3]s-count/new", MountPoint, vm.Host, cv.Version)
		out, _, err := vm.Exec(ctx, "/tmp/bareloop -probe "+paths)
		l.logf("calls: NFS %s: probe: %s (%v)", cv.Version, strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "), err)
	}
	local := CallsRates{Deliver: cv.Deliver, Bare: cv.Bare, Logins: cv.RepeatLogin}
	if o.CountOnly {
		cv.Rates = append(cv.Rates, local)
		return nil
	}
	if err := s.parallelRates(ctx, dial, vm, o, cv, &local, phase, bare, fetch); err != nil {
		return err
	}
	cv.Rates = append(cv.Rates, local)
	if o.Delay <= 0 {
		return nil
	}
	if err := vm.NetemTo(ctx, ServerAddr, o.Delay); err != nil {
		return err
	}
	defer vm.NetemTo(context.WithoutCancel(ctx), ServerAddr, 0)
	l.logf("calls: NFS %s: %v added to every round trip to the filer", cv.Version, o.Delay)
	far := CallsRates{Delay: o.Delay}
	if far.Deliver, err = phase("deliveries, filer far", deliver(o.DelayMessages)); err != nil {
		return err
	}
	if _, msg := logins(1, o.DelayMessages)(); msg != "" {
		problem("first login, filer far: %s", msg)
	}
	if far.Logins, err = phase("repeat logins, filer far", logins(o.RepeatLogins, o.DelayMessages)); err != nil {
		return err
	}
	if far.Bare, err = phase("bare loop, filer far", bare("far", o.DelayMessages, 1, 600)); err != nil {
		return err
	}
	if _, msg := fetch(); msg != "" {
		problem("emptying the mailbox, filer far: %s", msg)
	}
	if err := s.parallelRates(ctx, dial, vm, o, cv, &far, phase, bare, fetch); err != nil {
		return err
	}
	cv.Rates = append(cv.Rates, far)
	return vm.NetemTo(ctx, ServerAddr, 0)
}

// parallelRates measures Conns LMTP connections at once and the bare loop
// with Conns threads, then empties the mailbox.
func (s *ScaleOutLab) parallelRates(ctx context.Context, dial loadcheck.DialFunc, vm *VM, o CallsOptions, cv *CallsVersion, r *CallsRates,
	phase func(string, func() (int64, string)) (CallsPhase, error),
	bare func(string, int, int, int) func() (int64, string), fetch func() (int64, string)) error {
	var err error
	tag := fmt.Sprintf("%d connections", o.Conns)
	if r.Delay > 0 {
		tag += ", filer far"
	}
	if r.ParDeliver, err = phase("deliveries, "+tag, func() (int64, string) {
		b := loadcheck.LMTPBench(ctx, dial, s.HAProxy.LMTPAddr, s.Users, o.Conns, o.Size, time.Duration(o.RateSeconds)*time.Second)
		p := ""
		if b.Failed > 0 {
			p = fmt.Sprintf("%d failed: %s", b.Failed, b.FirstError)
		}
		return b.OK, p
	}); err != nil {
		return err
	}
	if r.ParBare, err = phase(fmt.Sprintf("bare loop, %d threads", o.Conns), bare(fmt.Sprintf("par%d", len(cv.Rates)), 0, o.Conns, o.RateSeconds)); err != nil {
		return err
	}
	if _, msg := fetch(); msg != "" {
		cv.Problems = append(cv.Problems, "emptying the mailbox: "+msg)
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// callsOpsOrder lists the procedures of the per-op tables: the ones a
// Maildir delivery and a POP3 login use, NFSv4's state and session calls
// after them.
var callsOpsOrder = []string{
	"LOOKUP", "GETATTR", "ACCESS", "CREATE", "OPEN", "OPEN_NOATTR", "CLOSE", "SETATTR", "WRITE", "COMMIT", "LINK", "REMOVE", "RENAME", "MKDIR",
	"READ", "READDIR", "READDIRPLUS", "SEQUENCE", "TEST_STATEID", "DELEGRETURN", "LAYOUTGET", "LAYOUTRETURN", "LAYOUTCOMMIT", "GETDEVICEINFO",
}

// String formats the report: the table docs/scaling.md shows, the rates,
// and the per-op breakdown.
func (r *CallsReport) String() string {
	var b strings.Builder
	o := r.Options
	fmt.Fprintf(&b, "NFS calls per unit from /proc/self/mountstats on one qemu TCG VM (Linux NFS client) against nfs-ganesha; host %d cores, load average %s before, %s after; %v in all\n",
		r.Cores, r.LoadBefore, r.LoadAfter, r.Total.Round(time.Second))
	fmt.Fprintf(&b, "one user, %d × %d B messages over one LMTP connection through HAProxy; %d repeat logins back to back (USER, PASS, UIDL, QUIT on the unchanged mailbox of %d); %d logins %v apart; one session retrieving and deleting all; bare loop %d files\n",
		o.Messages, o.Size, o.RepeatLogins, o.Messages, o.SpacedLogins, o.Spacing, o.Messages)
	for _, v := range r.Versions {
		fmt.Fprintf(&b, "NFS %s mount: %s\n", v.Version, v.MountLine)
	}
	b.WriteString("\n| calls, total / mutating (+ NFSv4 OPEN) |")
	for _, v := range r.Versions {
		fmt.Fprintf(&b, " nfsdrop v%s |", v.Version)
	}
	for _, v := range r.Versions {
		fmt.Fprintf(&b, " bare loop v%s |", v.Version)
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---|", 2*len(r.Versions)))
	b.WriteString("\n")
	row := func(name string, get func(*CallsVersion) CallsPhase, withBare bool) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, v := range r.Versions {
			fmt.Fprintf(&b, " %s |", get(v).Per())
		}
		for _, v := range r.Versions {
			if withBare {
				fmt.Fprintf(&b, " %s |", v.Bare.Per())
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	row("per delivery (bare loop: per file)", func(v *CallsVersion) CallsPhase { return v.Deliver }, true)
	row("per repeat login, back to back", func(v *CallsVersion) CallsPhase { return v.RepeatLogin }, false)
	row(fmt.Sprintf("per login %v apart (attribute cache expired)", o.Spacing), func(v *CallsVersion) CallsPhase { return v.SpacedLogin }, false)
	row("per retrieved + deleted message (session included)", func(v *CallsVersion) CallsPhase { return v.Fetch }, false)
	row("idle, per second (HAProxy checks, lease renewal)", func(v *CallsVersion) CallsPhase { return v.Idle }, false)

	fmt.Fprintf(&b, "\nrates (one at a time: 1 LMTP connection, 1 bare loop thread, 1 POP3 client; parallel: %d connections, %d threads, %ds):\n\n", o.Conns, o.Conns, o.RateSeconds)
	b.WriteString("| NFS | added to each round trip to the filer | deliveries/s | bare loop files/s | nfsdrop / bare | POP3 logins/s | deliveries/s, parallel | bare files/s, parallel | nfsdrop / bare, parallel |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, v := range r.Versions {
		for _, x := range v.Rates {
			fmt.Fprintf(&b, "| %s | %v | %.1f | %.1f | %s | %.1f | %.1f | %.1f | %s |\n", v.Version, x.Delay, x.Deliver.Rate(), x.Bare.Rate(), ratio(x.Deliver.Rate(), x.Bare.Rate()),
				x.Logins.Rate(), x.ParDeliver.Rate(), x.ParBare.Rate(), ratio(x.ParDeliver.Rate(), x.ParBare.Rate()))
		}
	}

	b.WriteString("\nper op (calls per unit):\n\n")
	type col struct {
		name string
		p    CallsPhase
	}
	var cols []col
	for _, v := range r.Versions {
		cols = append(cols, col{"delivery v" + v.Version, v.Deliver}, col{"bare file v" + v.Version, v.Bare})
	}
	for _, v := range r.Versions {
		cols = append(cols, col{"repeat login v" + v.Version, v.RepeatLogin}, col{"login 4 s apart v" + v.Version, v.SpacedLogin}, col{"retrieved+deleted v" + v.Version, v.Fetch})
	}
	b.WriteString("| op |")
	for _, c := range cols {
		fmt.Fprintf(&b, " %s |", c.name)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, op := range opsUsed(cols, func(c col) *MountStats { return c.p.Ops }) {
		fmt.Fprintf(&b, "| %s |", op)
		for _, c := range cols {
			if c.p.Ops == nil || c.p.Units <= 0 || c.p.Ops.Ops[op].Ops == 0 {
				b.WriteString(" |")
				continue
			}
			fmt.Fprintf(&b, " %.2f |", float64(c.p.Ops.Ops[op].Ops)/float64(c.p.Units))
		}
		b.WriteString("\n")
	}
	b.WriteString("| total |")
	for _, c := range cols {
		if c.p.Ops == nil || c.p.Units <= 0 {
			b.WriteString(" |")
			continue
		}
		fmt.Fprintf(&b, " %.2f |", float64(c.p.Ops.TotalOps())/float64(c.p.Units))
	}
	b.WriteString("\n\n")
	for _, v := range r.Versions {
		fmt.Fprintf(&b, "NFS %s, time waiting on the filer (mountstats execute time):\n", v.Version)
		for _, c := range []col{{"delivery", v.Deliver}, {"bare file", v.Bare}, {"repeat login", v.RepeatLogin}} {
			if c.p.Ops != nil {
				fmt.Fprintf(&b, "  %s: %s\n", c.name, strings.ReplaceAll(c.p.Ops.Summary(c.p.Units, c.p.Seconds), "\n", ""))
			}
		}
		for _, x := range v.Rates {
			if x.Delay > 0 && x.Deliver.Ops != nil {
				fmt.Fprintf(&b, "  delivery, filer %v far: %s\n", x.Delay, x.Deliver.Ops.CallsPer(x.Deliver.Units))
			}
		}
		for _, p := range v.Problems {
			fmt.Fprintf(&b, "  PROBLEM %s\n", p)
		}
	}
	return b.String()
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", 100*a/b)
}

// opsUsed lists the procedures any of the columns used: callsOpsOrder
// first, then the others by name.
func opsUsed[C any](cols []C, ops func(C) *MountStats) []string {
	used := map[string]bool{}
	for _, c := range cols {
		if m := ops(c); m != nil {
			for k, o := range m.Ops {
				if o.Ops > 0 {
					used[k] = true
				}
			}
		}
	}
	var out []string
	for _, k := range callsOpsOrder {
		if used[k] {
			out = append(out, k)
			delete(used, k)
		}
	}
	var rest []string
	for k := range used {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	return append(out, rest...)
}
