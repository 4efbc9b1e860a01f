package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ProofOptions configures RunProof.
type ProofOptions struct {
	// VMs is the number of machines (default 2).
	VMs int
	// BareSeconds is how long each VM runs the bare Maildir loop
	// (default 10); DeliverSeconds how long it runs nfsdrop deliver in a
	// loop (default 20).
	BareSeconds, DeliverSeconds int
	// Users is the number of mailboxes every VM delivers into, round
	// robin (default 3): the VMs write into the same Maildirs at once.
	Users int
	// NFSDrop is a static nfsdrop binary (CGO_ENABLED=0); "" builds
	// ./cmd/nfsdrop.
	NFSDrop string
	// MountOpts are the VMs' NFS mount options (default DefaultMountOpts).
	MountOpts string
}

// ProofReport is what RunProof measured and checked.
type ProofReport struct {
	VMs []*VMReport
	// Delivered counts messages whose deliver exited 0; Failed the others.
	Delivered, Failed int
	// Problems lists every broken promise: a message that exited 0 but is
	// missing or stored twice, a message stored although deliver failed,
	// a file left in tmp/, a bare-loop file count that does not match.
	Problems []string
	// Total is the wall time of the proof (from the start of the NFS
	// server to its stop).
	Total time.Duration
	// LoadBefore and LoadAfter are the host's /proc/loadavg: the VMs
	// share the host's cores with whatever else runs there.
	LoadBefore, LoadAfter string
	// Cores is the host's number of CPUs.
	Cores int
	// MountOpts are the VMs' mount options.
	MountOpts string
}

// VMReport is one VM's part of a ProofReport.
type VMReport struct {
	Host string
	// Boot is the time from starting qemu to the export being mounted.
	Boot time.Duration

	BareFiles   int
	BareSeconds float64
	BareOps     *MountStats

	Deliveries     int
	DeliverFailed  int
	DeliverSeconds float64
	ExitCodes      map[int]int
	DeliverOps     *MountStats
	DeliverErrors  string
}

// BareRate is the bare loop's files per second.
func (r *VMReport) BareRate() float64 { return rate(r.BareFiles, r.BareSeconds) }

// DeliverRate is nfsdrop deliver's messages per second (each one a new
// process, as under Postfix's mailbox_command).
func (r *VMReport) DeliverRate() float64 { return rate(r.Deliveries, r.DeliverSeconds) }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func rate(n int, s float64) float64 {
	if s <= 0 {
		return 0
	}
	return float64(n) / s
}

// proofScript runs in every VM: the bare loop, then nfsdrop deliver in a
// loop, with mountstats taken around each phase. Everything it measures
// is kept in the VM's /tmp until the end, so that writing the results does
// not add NFS calls to the counts; then it is copied to out/HOST/.
const proofScript = `#!/bin/sh
# nfsdrop lab proof (written by contrib/lab): bare Maildir loop, then
# nfsdrop deliver in a loop into shared Maildirs.
H=$LAB_HOST M=$LAB_MNT
O=$M/out/$H
mkdir -p "$O"
cp "$M/bin/nfsdrop" "$M/bin/bareloop" /tmp/ || exit 1
cp "$M/conf/$H.toml" /tmp/nfsdrop.toml && cp "$M/conf/users" /tmp/users || exit 1
i=0
while [ $i -lt 27 ]; do echo "The quick brown fox jumps over the lazy dog, line $i of the lab body....."; i=$((i + 1)); done >/tmp/body
echo "proof: $H bare loop"
cat /proc/self/mountstats >/tmp/ms-bare-0
/tmp/bareloop -dir "$M/bare/$H" -seconds {{BARE}} >/tmp/bare.txt 2>&1
cat /proc/self/mountstats >/tmp/ms-bare-1
echo "proof: $H $(cat /tmp/bare.txt)"
echo "proof: $H nfsdrop deliver"
cat /proc/self/mountstats >/tmp/ms-deliver-0
read -r t0 _ </proc/uptime
end=$((${t0%.*} + {{DELIVER}}))
i=0
: >/tmp/deliver.log
while :; do
	read -r u _ </proc/uptime
	[ "${u%.*}" -ge "$end" ] && break
	i=$((i + 1))
	n=$((i % {{USERS}} + 1))
	{
		printf 'From: lab@lab.test\nTo: u%d@lab.test\nSubject: lab %s %d\nMessage-ID: <%d.%s@lab.test>\n\n' "$n" "$H" "$i" "$i" "$H"
		cat /tmp/body
	} | /tmp/nfsdrop deliver -c /tmp/nfsdrop.toml -f lab@lab.test -a "u$n@lab.test" 2>>/tmp/deliver.err
	echo "$i $n $?" >>/tmp/deliver.log
done
read -r t1 _ </proc/uptime
cat /proc/self/mountstats >/tmp/ms-deliver-1
echo "t0=$t0 t1=$t1 n=$i" >/tmp/deliver.time
echo "proof: $H $i deliveries in $t0..$t1"
# After the counts: the doctor's probes of the real NFS mount (the POP3
# lock's symlink times among them).
/tmp/nfsdrop doctor -c /tmp/nfsdrop.toml >/tmp/doctor.txt 2>&1
cp /tmp/doctor.txt /tmp/bare.txt /tmp/ms-bare-0 /tmp/ms-bare-1 /tmp/ms-deliver-0 /tmp/ms-deliver-1 /tmp/deliver.log /tmp/deliver.err /tmp/deliver.time "$O/"
echo done >"$O/done"
sync
`

// ProofConfig is the nfsdrop configuration of one lab VM: mail under the
// export, users from the file next to it, LMTP on the VM's address.
func ProofConfig(host, addr string) string {
	return fmt.Sprintf(`# nfsdrop on lab VM %s (written by contrib/lab)
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
`, host, MountPoint, addr)
}

// RunProof is the first proof that several machines can serve the same
// users on one NFS store: every VM runs the bare durable Maildir loop,
// then nfsdrop deliver in a loop into the same Maildirs; afterwards (VMs
// and NFS server stopped) every message that deliver accepted must be in
// new/ exactly once. It also measures boot time, both rates and the NFS
// calls per delivery. The lab must be new: RunProof writes the export and
// starts the NFS server and the VMs.
func RunProof(ctx context.Context, l *Lab, o ProofOptions) (*ProofReport, error) {
	if o.VMs == 0 {
		o.VMs = 2
	}
	if o.BareSeconds == 0 {
		o.BareSeconds = 10
	}
	if o.DeliverSeconds == 0 {
		o.DeliverSeconds = 20
	}
	if o.Users == 0 {
		o.Users = 3
	}
	ex := l.Export
	if err := l.PrepareNFSDrop(ctx, o.NFSDrop, o.VMs, o.Users); err != nil {
		return nil, err
	}
	if err := l.GoBuild(ctx, "./contrib/lab/cmd/bareloop", filepath.Join(ex, "bin", "bareloop")); err != nil {
		return nil, err
	}
	script := strings.NewReplacer("{{BARE}}", strconv.Itoa(o.BareSeconds),
		"{{DELIVER}}", strconv.Itoa(o.DeliverSeconds), "{{USERS}}", strconv.Itoa(o.Users)).Replace(proofScript)
	if _, err := l.WriteScript("proof.sh", script); err != nil {
		return nil, err
	}

	rep := &ProofReport{LoadBefore: loadavg(), Cores: runtime.NumCPU(), MountOpts: o.MountOpts}
	if rep.MountOpts == "" {
		rep.MountOpts = DefaultMountOpts
	}
	t0 := time.Now()
	if err := l.NFS.Start(ctx); err != nil {
		return nil, err
	}
	vms, err := l.StartVMs(ctx, o.VMs, func(int) VMConfig {
		return VMConfig{Script: "run/proof.sh", MountOpts: o.MountOpts}
	})
	if err != nil {
		return nil, err
	}
	for _, v := range vms {
		d, err := v.WaitReady(ctx, 3*time.Minute)
		if err != nil {
			return nil, err
		}
		rep.VMs = append(rep.VMs, &VMReport{Host: v.Host, Boot: d})
		l.logf("vm %s: booted and mounted in %v", v.Host, d.Round(10*time.Millisecond))
	}
	// Each VM powers itself off when its script ends.
	limit := time.Duration(o.BareSeconds+o.DeliverSeconds)*time.Second + 2*time.Minute
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for _, v := range vms {
		if err := v.Wait(wctx); err != nil && wctx.Err() != nil {
			return nil, fmt.Errorf("lab: %s still running after %v; console:\n%s", v.Host, limit, tail([]byte(v.Console()), 3000))
		}
		l.logf("vm %s: powered off", v.Host)
	}
	// The export is read from the host only with the NFS server stopped.
	if err := l.NFS.Stop(); err != nil {
		return nil, err
	}
	rep.Total = time.Since(t0)
	rep.LoadAfter = loadavg()

	msgs := map[string]int{} // "host i" -> deliver's exit status
	for _, r := range rep.VMs {
		if err := readVMResults(ex, r, msgs); err != nil {
			rep.Problems = append(rep.Problems, err.Error())
		}
		rep.Delivered += r.Deliveries - r.DeliverFailed
		rep.Failed += r.DeliverFailed
	}
	checkMaildirs(ex, o.Users, msgs, rep)
	return rep, nil
}

// readVMResults reads what the proof script of one VM left in out/HOST/.
func readVMResults(ex string, r *VMReport, msgs map[string]int) error {
	dir := filepath.Join(ex, "out", r.Host)
	if !fileExists(filepath.Join(dir, "done")) {
		return fmt.Errorf("%s: the proof script did not finish (no out/%s/done)", r.Host, r.Host)
	}
	var errs []error
	b, err := os.ReadFile(filepath.Join(dir, "bare.txt"))
	if err != nil {
		errs = append(errs, err)
	} else if m := regexp.MustCompile(`files=(\d+) seconds=([0-9.]+)`).FindSubmatch(b); m != nil {
		r.BareFiles, _ = strconv.Atoi(string(m[1]))
		r.BareSeconds, _ = strconv.ParseFloat(string(m[2]), 64)
	} else {
		errs = append(errs, fmt.Errorf("%s: bare loop: %s", r.Host, strings.TrimSpace(string(b))))
	}
	if n, err := countDir(filepath.Join(ex, "bare", r.Host, "new")); err != nil {
		errs = append(errs, err)
	} else if n != r.BareFiles {
		errs = append(errs, fmt.Errorf("%s: bare loop reported %d files, new/ holds %d", r.Host, r.BareFiles, n))
	}
	if r.BareOps, err = diffStats(dir, "bare"); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", r.Host, err))
	}
	if r.DeliverOps, err = diffStats(dir, "deliver"); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", r.Host, err))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "deliver.time")); err == nil {
		m := regexp.MustCompile(`t0=([0-9.]+) t1=([0-9.]+)`).FindSubmatch(b)
		if m != nil {
			a, _ := strconv.ParseFloat(string(m[1]), 64)
			z, _ := strconv.ParseFloat(string(m[2]), 64)
			r.DeliverSeconds = z - a
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "deliver.err")); err == nil {
		r.DeliverErrors = string(b)
	}
	if err := checkDoctor(dir); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", r.Host, err))
	}
	f, err := os.Open(filepath.Join(dir, "deliver.log"))
	if err != nil {
		errs = append(errs, err)
		return errors.Join(errs...)
	}
	defer f.Close()
	r.ExitCodes = map[int]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var i, n, code int
		if _, err := fmt.Sscanf(sc.Text(), "%d %d %d", &i, &n, &code); err != nil {
			errs = append(errs, fmt.Errorf("%s: deliver.log: %q", r.Host, sc.Text()))
			continue
		}
		r.Deliveries++
		r.ExitCodes[code]++
		if code != 0 {
			r.DeliverFailed++
		}
		msgs[fmt.Sprintf("%s %d", r.Host, i)] = code
	}
	return errors.Join(errs...)
}

func diffStats(dir, phase string) (*MountStats, error) {
	var ms [2]*MountStats
	for i := range ms {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("ms-%s-%d", phase, i)))
		if err != nil {
			return nil, err
		}
		if ms[i], err = ParseMountStats(string(b), MountPoint); err != nil {
			return nil, err
		}
	}
	return ms[1].Sub(ms[0]), nil
}

func countDir(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	return len(ents), err
}

var subjectRE = regexp.MustCompile(`(?m)^Subject: lab (\S+) (\d+)\r?$`)

// checkMaildirs reads every message in the users' Maildirs and compares
// them with what deliver answered.
func checkMaildirs(ex string, users int, msgs map[string]int, rep *ProofReport) {
	seen := map[string]int{}
	problem := func(format string, args ...any) {
		if len(rep.Problems) < 50 {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		}
	}
	for u := 1; u <= users; u++ {
		md := filepath.Join(ex, "mail", "lab.test", fmt.Sprintf("u%d", u), "Maildir")
		for _, sub := range []string{"tmp", "cur"} {
			if n, err := countDir(filepath.Join(md, sub)); err == nil && n > 0 {
				problem("u%d: %d files left in %s/", u, n, sub)
			}
		}
		ents, err := os.ReadDir(filepath.Join(md, "new"))
		if err != nil {
			if !os.IsNotExist(err) || len(msgs) > 0 {
				problem("u%d: %v", u, err)
			}
			continue
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(md, "new", e.Name()))
			if err != nil {
				problem("u%d: %v", u, err)
				continue
			}
			m := subjectRE.FindSubmatch(b)
			if m == nil {
				problem("u%d: new/%s: no lab Subject", u, e.Name())
				continue
			}
			key := string(m[1]) + " " + string(m[2])
			seen[key]++
			if want := fmt.Sprintf("To: u%d@lab.test", u); !strings.Contains(string(b), want) {
				problem("u%d: new/%s (%s) is another user's message", u, e.Name(), key)
			}
			if !strings.Contains(string(b), "line 26 of the lab body") {
				problem("u%d: new/%s (%s) is truncated (%d bytes)", u, e.Name(), key, len(b))
			}
		}
	}
	keys := make([]string, 0, len(msgs))
	for k := range msgs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		code, n := msgs[k], seen[k]
		switch {
		case code == 0 && n != 1:
			problem("message %q: deliver exited 0, stored %d times", k, n)
		case code != 0 && n != 0:
			problem("message %q: deliver exited %d, yet stored %d times", k, code, n)
		}
	}
	for k, n := range seen {
		if _, ok := msgs[k]; !ok {
			problem("message %q stored %d times but never sent", k, n)
		}
	}
}

// String formats the report for people.
func (r *ProofReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nfsdrop lab: %d VMs (qemu TCG, 1 CPU each) on one NFSv%s export (nfs-ganesha, %s), %v in all\n", len(r.VMs), NFSVersionOf(r.MountOpts), r.MountOpts, r.Total.Round(time.Second))
	for _, v := range r.VMs {
		fmt.Fprintf(&b, "%s: boot+mount %.1fs | bare loop %d files in %.1fs = %.1f files/s | nfsdrop deliver %d in %.1fs = %.1f/s",
			v.Host, v.Boot.Seconds(), v.BareFiles, v.BareSeconds, v.BareRate(), v.Deliveries, v.DeliverSeconds, v.DeliverRate())
		if v.DeliverFailed > 0 {
			fmt.Fprintf(&b, " (%d failed, exit codes %v)", v.DeliverFailed, v.ExitCodes)
		}
		b.WriteString("\n")
		if v.BareOps != nil {
			fmt.Fprintf(&b, "  NFS calls in the bare loop (count, per file):\n    %s\n", v.BareOps.Summary(int64(v.BareFiles), v.BareSeconds))
		}
		if v.DeliverOps != nil {
			fmt.Fprintf(&b, "  NFS calls in nfsdrop deliver (count, per delivery):\n    %s\n", v.DeliverOps.Summary(int64(v.Deliveries), v.DeliverSeconds))
		}
	}
	var bare, del float64
	for _, v := range r.VMs {
		bare += v.BareRate()
		del += v.DeliverRate()
	}
	fmt.Fprintf(&b, "sum over VMs: bare loop %.1f files/s, nfsdrop deliver %.1f/s (one process at a time per VM, all VMs at once)\n", bare, del)
	fmt.Fprintf(&b, "host: %d cores, load average %s before, %s after (the emulated CPUs compete with everything else on the host: compare rates within one run)\n", r.Cores, r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "check: %d messages accepted (exit 0), %d refused; ", r.Delivered, r.Failed)
	if len(r.Problems) == 0 {
		b.WriteString("every accepted message is in new/ exactly once\n")
	} else {
		fmt.Fprintf(&b, "%d problems:\n", len(r.Problems))
		for _, p := range r.Problems {
			fmt.Fprintf(&b, "  - %s\n", p)
		}
	}
	return b.String()
}

// checkDoctor reads what nfsdrop doctor said on the VM's real NFS mount:
// the probes the store relies on must pass there (the POP3 lock is a
// symlink whose own times the file server must let it set).
func checkDoctor(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "doctor.txt"))
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	for _, probe := range []string{"link-rename", "symlink-lock"} {
		m := regexp.MustCompile(`(?m)^` + probe + `\s+(\S+)`).FindSubmatch(b)
		if m == nil || string(m[1]) != "OK" {
			return fmt.Errorf("doctor's %s probe on the NFS mount did not pass:\n%s", probe, b)
		}
	}
	return nil
}
