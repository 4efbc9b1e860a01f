package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab/loadcheck"
)

// ScalingOptions configures RunScaling.
type ScalingOptions struct {
	// MaxVMs: rates are measured with 1..MaxVMs machines (default 3).
	MaxVMs int
	// Users are the mailboxes deliveries go to and POP3 clients log in
	// to, one client each (default 8).
	Users int
	// DeliverSeconds, LoginSeconds and BareSeconds are the length of each
	// measurement (defaults 20, 15, 10).
	DeliverSeconds, LoginSeconds, BareSeconds int
	// ConnsPerVM is the number of LMTP connections per machine (default 4).
	ConnsPerVM int
	// BigMailboxes are the sizes of the mailboxes made on the export for
	// the repeat-login check (default 1000 and 5000 messages).
	BigMailboxes []int
	// WarmLogins is the number of repeat logins measured per big mailbox
	// (default 10).
	WarmLogins int
	// Variants are mount option sets compared on VariantVMs machines
	// (default: DefaultMountOpts, with actimeo=0, with
	// lookupcache=positive, with nocto). None: no comparison.
	Variants   []string
	NoVariants bool
	VariantVMs int
	// NFSDrop is a static nfsdrop binary; "" builds one.
	NFSDrop string
	// MountOpts are the VMs' mount options (default DefaultMountOpts;
	// MountOptsFor gives them for another NFS version).
	MountOpts string
}

// PhaseOps is the NFS calls of all VMs during one measurement.
type PhaseOps = *MountStats

// ScalingRow is one machine count's measurements.
type ScalingRow struct {
	VMs        int
	Deliver    loadcheck.BenchResult
	DeliverOps PhaseOps
	Login      loadcheck.BenchResult
	LoginOps   PhaseOps
	// Bare is the bare Maildir loop run at once on each of the VMs, in
	// files per second summed over them.
	BareFiles   int
	BareRate    float64
	BareOps     PhaseOps
	BareProblem string
	// Fetch is one session per mailbox that retrieves and deletes every
	// message delivered in this row's delivery phase.
	FetchSessions, FetchMessages int
	FetchSeconds                 float64
	FetchOps                     PhaseOps
	FetchProblem                 string
}

// BigLogin is the cost of logging in to a mailbox of Messages messages:
// the first login on a machine (its listing cache is cold) and the repeat
// logins after it.
type BigLogin struct {
	Messages   int
	Listed     int
	ColdOps    PhaseOps
	WarmLogins int
	WarmOps    PhaseOps
	Problem    string
}

// VariantRow is one set of mount options.
type VariantRow struct {
	Opts       string
	VMs        int
	Deliver    loadcheck.BenchResult
	DeliverOps PhaseOps
	Login      loadcheck.BenchResult
	LoginOps   PhaseOps
	Big        []BigLogin
}

// ScalingReport is what RunScaling measured.
type ScalingReport struct {
	Rows                  []ScalingRow
	Big                   []BigLogin
	Variants              []VariantRow
	Options               ScalingOptions
	LoadBefore, LoadAfter string
	Cores                 int
	Total                 time.Duration
}

func bigUser(n int) string { return fmt.Sprintf("big%d@lab.test", n) }

// writeBigMailbox fills user's new/ with n small messages named as
// nfsdrop names them (with ,S= and ,W=), from the host, before the NFS
// server starts.
func (l *Lab) writeBigMailbox(user string, n int) error {
	md := l.LabMaildir(user)
	for _, d := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(md, d), 0o700); err != nil {
			return err
		}
	}
	t0 := time.Now().Add(-time.Duration(n) * time.Second)
	for i := 0; i < n; i++ {
		t := t0.Add(time.Duration(i) * time.Second)
		_, msg := loadcheck.Compose("seed", i, "seed@lab.test", user, 300, t)
		lf := []byte(strings.ReplaceAll(string(msg), "\r\n", "\n"))
		w := len(lf) + strings.Count(string(lf), "\n")
		name := fmt.Sprintf("%d.M%06dP1Q%dR%08x.seed.test,S=%d,W=%d", t.Unix(), t.Nanosecond()/1000, i+1, i, len(lf), w)
		if err := os.WriteFile(filepath.Join(md, "new", name), lf, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (o *ScalingOptions) defaults() {
	if o.MaxVMs == 0 {
		o.MaxVMs = 3
	}
	if o.Users == 0 {
		o.Users = 8
	}
	if o.DeliverSeconds == 0 {
		o.DeliverSeconds = 20
	}
	if o.LoginSeconds == 0 {
		o.LoginSeconds = 15
	}
	if o.BareSeconds == 0 {
		o.BareSeconds = 10
	}
	if o.ConnsPerVM == 0 {
		o.ConnsPerVM = 4
	}
	if o.BigMailboxes == nil {
		o.BigMailboxes = []int{1000, 5000}
	}
	if o.WarmLogins == 0 {
		o.WarmLogins = 10
	}
	if o.MountOpts == "" {
		o.MountOpts = DefaultMountOpts
	}
	if o.Variants == nil && !o.NoVariants {
		o.Variants = []string{o.MountOpts, o.MountOpts + ",actimeo=0", o.MountOpts + ",lookupcache=positive", o.MountOpts + ",nocto"}
	}
	if o.NoVariants {
		o.Variants = nil
	}
	if o.VariantVMs == 0 {
		o.VariantVMs = 2
		if o.MaxVMs < 2 {
			o.VariantVMs = 1
		}
	}
}

// RunScaling measures, on one store: deliveries per second through lmtpd
// and POP3 logins per second with 1..MaxVMs machines behind HAProxy,
// beside the bare Maildir loop on the same machines and mount; the NFS
// calls each costs (from the VMs' mountstats); the calls of a first and a
// repeat login on big mailboxes (a repeat login must cost the same on
// 1,000 and 5,000 messages); and all of it again under other mount
// options. The lab must be new.
func RunScaling(ctx context.Context, l *Lab, o ScalingOptions) (*ScalingReport, error) {
	o.defaults()
	rep := &ScalingReport{Options: o, LoadBefore: loadavg(), Cores: runtime.NumCPU()}
	t0 := time.Now()
	prepare := func() error {
		if err := l.GoBuild(ctx, "./contrib/lab/cmd/bareloop", filepath.Join(l.Export, "bin", "bareloop")); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(l.Export, "conf", "users"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, n := range o.BigMailboxes {
			fmt.Fprintf(f, "%s:{PLAIN}pw::::::\n", bigUser(n))
			if err := l.writeBigMailbox(bigUser(n), n); err != nil {
				return err
			}
		}
		return nil
	}
	s, err := StartScaleOut(ctx, l, o.MaxVMs, o.Users, o.NFSDrop, o.MountOpts, 30*time.Second, false, prepare)
	if err != nil {
		return nil, err
	}
	for _, v := range s.VMs {
		if _, code, err := v.Exec(ctx, "cp "+MountPoint+"/bin/bareloop /tmp/bareloop"); err != nil || code != 0 {
			return nil, fmt.Errorf("lab: %s: copy bareloop: exit %d %v", v.Host, code, err)
		}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return l.Net.Dial(ctx, l.Net.Client, network, addr)
	}
	for n := 1; n <= o.MaxVMs; n++ {
		if err := s.balance(ctx, s.VMs[:n]); err != nil {
			return nil, err
		}
		row := ScalingRow{VMs: n}
		row.DeliverOps, row.Deliver, err = s.measure(ctx, s.VMs[:n], func() loadcheck.BenchResult {
			return loadcheck.LMTPBench(ctx, dial, s.HAProxy.LMTPAddr, s.Users, o.ConnsPerVM*n, 2000, time.Duration(o.DeliverSeconds)*time.Second)
		})
		if err != nil {
			return nil, err
		}
		l.logf("scaling: %d VMs: deliveries %s", n, row.Deliver)
		row.LoginOps, row.Login, err = s.measure(ctx, s.VMs[:n], func() loadcheck.BenchResult {
			return loadcheck.POP3Bench(ctx, dial, s.HAProxy.POP3Addr, s.Users, "pw", time.Duration(o.LoginSeconds)*time.Second)
		})
		if err != nil {
			return nil, err
		}
		l.logf("scaling: %d VMs: POP3 logins %s", n, row.Login)
		row.BareOps, _, err = s.measure(ctx, s.VMs[:n], func() loadcheck.BenchResult {
			row.BareFiles, row.BareRate, row.BareProblem = s.bareLoop(ctx, s.VMs[:n], o.BareSeconds, fmt.Sprintf("n%d", n))
			return loadcheck.BenchResult{}
		})
		if err != nil {
			return nil, err
		}
		l.logf("scaling: %d VMs: bare loop %d files, %.1f files/s %s", n, row.BareFiles, row.BareRate, row.BareProblem)
		row.FetchOps, _, err = s.measure(ctx, s.VMs[:n], func() loadcheck.BenchResult {
			t := time.Now()
			for _, u := range s.Users {
				got, err := loadcheck.FetchAll(ctx, dial, s.HAProxy.POP3Addr, u, "pw", true)
				row.FetchMessages += got
				row.FetchSessions++
				if err != nil && row.FetchProblem == "" {
					row.FetchProblem = fmt.Sprintf("%s: %v", u, err)
				}
			}
			row.FetchSeconds = time.Since(t).Seconds()
			return loadcheck.BenchResult{}
		})
		if err != nil {
			return nil, err
		}
		l.logf("scaling: %d VMs: %d sessions retrieved and deleted %d messages in %.1fs %s", n, row.FetchSessions, row.FetchMessages, row.FetchSeconds, row.FetchProblem)
		rep.Rows = append(rep.Rows, row)
	}
	if err := s.balance(ctx, s.VMs[:1]); err != nil {
		return nil, err
	}
	rep.Big = s.bigLogins(ctx, dial, o)

	if len(o.Variants) > 0 {
		k := o.VariantVMs
		for _, opts := range o.Variants {
			l.logf("scaling: mount options %s on %d VMs", opts, k)
			for _, v := range s.VMs {
				if err := v.Poweroff(ctx); err != nil {
					return nil, err
				}
			}
			for _, v := range s.VMs[:k] {
				v.Config.MountOpts = opts
				if err := v.Start(ctx); err != nil {
					return nil, err
				}
			}
			for _, v := range s.VMs[:k] {
				if _, err := v.WaitReady(ctx, 3*time.Minute); err != nil {
					return nil, err
				}
			}
			if err := s.balance(ctx, s.VMs[:k]); err != nil {
				return nil, err
			}
			vr := VariantRow{Opts: opts, VMs: k}
			vr.DeliverOps, vr.Deliver, err = s.measure(ctx, s.VMs[:k], func() loadcheck.BenchResult {
				return loadcheck.LMTPBench(ctx, dial, s.HAProxy.LMTPAddr, s.Users, o.ConnsPerVM*k, 2000, time.Duration(o.DeliverSeconds)*time.Second)
			})
			if err != nil {
				return nil, err
			}
			vr.LoginOps, vr.Login, err = s.measure(ctx, s.VMs[:k], func() loadcheck.BenchResult {
				return loadcheck.POP3Bench(ctx, dial, s.HAProxy.POP3Addr, s.Users, "pw", time.Duration(o.LoginSeconds)*time.Second)
			})
			if err != nil {
				return nil, err
			}
			if err := s.balance(ctx, s.VMs[:1]); err != nil {
				return nil, err
			}
			vr.Big = s.bigLogins(ctx, dial, o)
			l.logf("scaling: %s: deliveries %s, logins %s", opts, vr.Deliver, vr.Login)
			rep.Variants = append(rep.Variants, vr)
		}
	}
	if err := s.Shutdown(ctx); err != nil {
		return nil, err
	}
	rep.Total = time.Since(t0)
	rep.LoadAfter = loadavg()
	return rep, nil
}

// balance points HAProxy at vms (restarting it) and waits until they are UP.
func (s *ScaleOutLab) balance(ctx context.Context, vms []*VM) error {
	if s.HAProxy != nil {
		s.HAProxy.Stop()
	}
	var err error
	if s.HAProxy, err = s.Lab.StartHAProxy(ctx, HAProxyOptions{VMs: vms}); err != nil {
		return err
	}
	return s.HAProxy.WaitUp(ctx, 2*time.Minute)
}

// snapshot sums the NFS counters of vms.
func snapshot(ctx context.Context, vms []*VM) (*MountStats, error) {
	var sum *MountStats
	for _, v := range vms {
		if !v.Running() {
			continue
		}
		ms, err := v.Mountstats(ctx)
		if err != nil {
			return nil, err
		}
		if sum == nil {
			sum = ms.Add(nil)
		} else {
			sum = sum.Add(ms)
		}
	}
	return sum, nil
}

// measure runs f and returns the NFS calls vms made meanwhile.
func (s *ScaleOutLab) measure(ctx context.Context, vms []*VM, f func() loadcheck.BenchResult) (*MountStats, loadcheck.BenchResult, error) {
	before, err := snapshot(ctx, vms)
	if err != nil {
		return nil, loadcheck.BenchResult{}, err
	}
	r := f()
	// Let the last replies' trailing calls (unlink of tmp/, lock removal)
	// land in this phase.
	time.Sleep(time.Second)
	after, err := snapshot(ctx, vms)
	if err != nil {
		return nil, r, err
	}
	return after.Sub(before), r, nil
}

var bareRE = regexp.MustCompile(`files=(\d+) seconds=([0-9.]+)`)

// bareLoop runs the bare Maildir loop on each of vms at once (each in its
// own directory) and returns the files made and the summed rate.
func (s *ScaleOutLab) bareLoop(ctx context.Context, vms []*VM, seconds int, tag string) (int, float64, string) {
	var mu sync.Mutex
	var files int
	var rate float64
	var problems []string
	var wg sync.WaitGroup
	for _, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, code, err := v.Exec(ctx, fmt.Sprintf("/tmp/bareloop -dir %s/bare/%s-%s -seconds %d", MountPoint, v.Host, tag, seconds))
			mu.Lock()
			defer mu.Unlock()
			m := bareRE.FindStringSubmatch(out)
			if err != nil || code != 0 || m == nil {
				problems = append(problems, fmt.Sprintf("%s: exit %d %v %q", v.Host, code, err, out))
				return
			}
			n, _ := strconv.Atoi(m[1])
			sec, _ := strconv.ParseFloat(m[2], 64)
			files += n
			rate += float64(n) / sec
		}()
	}
	wg.Wait()
	return files, rate, strings.Join(problems, "; ")
}

// bigLogins logs in to each big mailbox through HAProxy (pointed at one
// VM, whose listing cache is cold for it): once (the cold login), then
// WarmLogins times, and returns the NFS calls of each.
func (s *ScaleOutLab) bigLogins(ctx context.Context, dial loadcheck.DialFunc, o ScalingOptions) []BigLogin {
	var out []BigLogin
	for _, n := range o.BigMailboxes {
		b := BigLogin{Messages: n, WarmLogins: o.WarmLogins}
		var lerr error
		var err error
		b.ColdOps, _, err = s.measure(ctx, s.VMs, func() loadcheck.BenchResult {
			b.Listed, _, lerr = loadcheck.Login(ctx, dial, s.HAProxy.POP3Addr, bigUser(n), "pw")
			return loadcheck.BenchResult{}
		})
		if err == nil && lerr == nil {
			b.WarmOps, _, err = s.measure(ctx, s.VMs, func() loadcheck.BenchResult {
				for i := 0; i < o.WarmLogins && lerr == nil; i++ {
					var listed int
					listed, _, lerr = loadcheck.Login(ctx, dial, s.HAProxy.POP3Addr, bigUser(n), "pw")
					if lerr == nil && listed != n {
						lerr = fmt.Errorf("repeat login listed %d messages, want %d", listed, n)
					}
				}
				return loadcheck.BenchResult{}
			})
		}
		switch {
		case err != nil:
			b.Problem = err.Error()
		case lerr != nil:
			b.Problem = lerr.Error()
		case b.Listed != n:
			b.Problem = fmt.Sprintf("first login listed %d messages, want %d", b.Listed, n)
		}
		s.Lab.logf("scaling: mailbox of %d: first login %d NFS calls, repeat login %.1f %s", n, opsOf(b.ColdOps), perUnit(b.WarmOps, b.WarmLogins), b.Problem)
		out = append(out, b)
	}
	return out
}

func opsOf(m *MountStats) int64 {
	if m == nil {
		return -1
	}
	return m.TotalOps()
}

func perUnit(m *MountStats, n int) float64 {
	if m == nil || n <= 0 {
		return -1
	}
	return float64(m.TotalOps()) / float64(n)
}

// String formats the report: the tables docs/scaling.md shows.
func (r *ScalingReport) String() string {
	var b strings.Builder
	o := r.Options
	fmt.Fprintf(&b, "nfsdrop scaling on one NFSv%s export (nfs-ganesha, mount %s), qemu TCG VMs with 1 CPU each on a host with %d cores (load average %s before, %s after), %v in all\n",
		NFSVersionOf(o.MountOpts), o.MountOpts, r.Cores, r.LoadBefore, r.LoadAfter, r.Total.Round(time.Second))
	fmt.Fprintf(&b, "deliveries: LMTP through HAProxy, %d connections per VM, 2 KB messages, %d mailboxes, %ds; POP3: one client per mailbox (%d) logging in again and again (USER, PASS, UIDL, QUIT), %ds; bare loop: %ds on each VM at once\n\n",
		o.ConnsPerVM, o.Users, o.DeliverSeconds, o.Users, o.LoginSeconds, o.BareSeconds)
	b.WriteString("| VMs | deliveries/s | NFS calls/delivery | POP3 logins/s | NFS calls/login | bare loop files/s | NFS calls/bare file |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", row.VMs, row.Deliver.Rate(), perUnit(row.DeliverOps, int(row.Deliver.OK)),
			row.Login.Rate(), perUnit(row.LoginOps, int(row.Login.OK)), row.BareRate, perUnit(row.BareOps, row.BareFiles))
	}
	b.WriteString("\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "%d VMs: deliveries %s; logins %s; bare %d files %s\n", row.VMs, row.Deliver, row.Login, row.BareFiles, row.BareProblem)
		if row.DeliverOps != nil {
			fmt.Fprintf(&b, "  per delivery: %s\n", row.DeliverOps.PerUnit(row.Deliver.OK))
		}
		if row.LoginOps != nil {
			fmt.Fprintf(&b, "  per login:    %s\n", row.LoginOps.PerUnit(row.Login.OK))
		}
		if row.BareOps != nil {
			fmt.Fprintf(&b, "  per bare file: %s\n", row.BareOps.PerUnit(int64(row.BareFiles)))
		}
		if row.FetchOps != nil {
			fmt.Fprintf(&b, "  %d sessions retrieved and deleted %d messages in %.1fs (%.1f messages/s) %s\n", row.FetchSessions, row.FetchMessages, row.FetchSeconds, rate(row.FetchMessages, row.FetchSeconds), row.FetchProblem)
			fmt.Fprintf(&b, "  per message retrieved and deleted (session costs included): %s\n", row.FetchOps.PerUnit(int64(row.FetchMessages)))
		}
	}
	b.WriteString("\nrepeat login on an unchanged mailbox (one VM, its listing cache cold for the first login):\n")
	writeBig(&b, r.Big)
	if len(r.Variants) > 0 {
		fmt.Fprintf(&b, "\nmount options (%d VMs):\n\n", o.VariantVMs)
		b.WriteString("| mount options | deliveries/s | NFS calls/delivery | GETATTR/delivery | LOOKUP/delivery | logins/s | NFS calls/login | repeat login, 1st big mailbox | repeat login, last big mailbox |\n")
		b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		for _, v := range r.Variants {
			var first, last float64 = -1, -1
			if len(v.Big) > 0 {
				first = perUnit(v.Big[0].WarmOps, v.Big[0].WarmLogins)
				last = perUnit(v.Big[len(v.Big)-1].WarmOps, v.Big[len(v.Big)-1].WarmLogins)
			}
			fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", v.Opts, v.Deliver.Rate(), perUnit(v.DeliverOps, int(v.Deliver.OK)),
				opPer(v.DeliverOps, "GETATTR", v.Deliver.OK), opPer(v.DeliverOps, "LOOKUP", v.Deliver.OK),
				v.Login.Rate(), perUnit(v.LoginOps, int(v.Login.OK)), first, last)
		}
		b.WriteString("\n")
		for _, v := range r.Variants {
			fmt.Fprintf(&b, "%s: deliveries %s; logins %s\n", v.Opts, v.Deliver, v.Login)
			if v.DeliverOps != nil {
				fmt.Fprintf(&b, "  per delivery: %s\n", v.DeliverOps.PerUnit(v.Deliver.OK))
			}
			if v.LoginOps != nil {
				fmt.Fprintf(&b, "  per login:    %s\n", v.LoginOps.PerUnit(v.Login.OK))
			}
			writeBig(&b, v.Big)
		}
	}
	return b.String()
}

func opPer(m *MountStats, op string, n int64) float64 {
	if m == nil || n <= 0 {
		return -1
	}
	return float64(m.Ops[op].Ops) / float64(n)
}

func writeBig(b *strings.Builder, big []BigLogin) {
	for _, x := range big {
		fmt.Fprintf(b, "  %d messages: first login %d NFS calls", x.Messages, opsOf(x.ColdOps))
		if x.ColdOps != nil {
			fmt.Fprintf(b, " (%s)", x.ColdOps.PerUnit(1))
		}
		fmt.Fprintf(b, "; repeat login %.1f calls each", perUnit(x.WarmOps, x.WarmLogins))
		if x.WarmOps != nil {
			fmt.Fprintf(b, " (%s)", x.WarmOps.PerUnit(int64(x.WarmLogins)))
		}
		if x.Problem != "" {
			fmt.Fprintf(b, "; PROBLEM %s", x.Problem)
		}
		b.WriteString("\n")
	}
}
