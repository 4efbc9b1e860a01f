package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SystemdOptions configures RunSystemd.
type SystemdOptions struct {
	// Dist is a directory that build.sh filled with this version's and
	// PreviousVersion's packages and their repositories. "" builds them
	// into the lab's directory.
	Dist string
	// PreviousVersion is the version installed first and upgraded from.
	PreviousVersion string
	// Long adds the slow steps: LDAP on another host with the
	// IPAddressAllow= drop-in, watchdog, restart and stop/start under a
	// stream of mail, the upgrade under mail, the sweeper, a reboot and
	// purge. Without it: boot, install, socket activation, first mail,
	// STATUS=, POP3 and POP3S, reload, clamd, User=nfsdrop, security
	// scores and the journal.
	Long bool
	// Messages is how many mails each streaming step sends (default 40).
	Messages int
}

// SystemdStep is one checked step of the run.
type SystemdStep struct {
	Name    string
	Took    time.Duration
	Err     error
	Details string
}

// SystemdReport is what RunSystemd found.
type SystemdReport struct {
	RootBuild, ImagePack, Boot, Reboot time.Duration
	Steps                              []SystemdStep
	// Security maps a service to the "Overall exposure level" line of
	// systemd-analyze security in the VM.
	Security map[string]string
	// Journal holds the journal lines that name a sandbox refusal.
	Journal []string
}

// Failed reports whether a step failed.
func (r *SystemdReport) Failed() bool {
	for _, s := range r.Steps {
		if s.Err != nil {
			return true
		}
	}
	return len(r.Journal) > 0
}

func (r *SystemdReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "root file system build %v (0 = cached), image pack %v, boot %v, reboot %v\n",
		r.RootBuild.Round(time.Second), r.ImagePack.Round(time.Second), r.Boot.Round(time.Second), r.Reboot.Round(time.Second))
	for _, s := range r.Steps {
		status := "ok  "
		if s.Err != nil {
			status = "FAIL"
		}
		fmt.Fprintf(&b, "%s %-55s %6.1fs", status, s.Name, s.Took.Seconds())
		if s.Details != "" {
			fmt.Fprintf(&b, "  %s", s.Details)
		}
		if s.Err != nil {
			fmt.Fprintf(&b, "\n     %v", s.Err)
		}
		b.WriteString("\n")
	}
	for svc, line := range r.Security {
		fmt.Fprintf(&b, "systemd-analyze security %s: %s\n", svc, line)
	}
	if len(r.Journal) == 0 {
		b.WriteString("journal: no SIGSYS, EPERM, \"Operation not permitted\" or seccomp audit line\n")
	}
	for _, l := range r.Journal {
		fmt.Fprintf(&b, "journal: %s\n", l)
	}
	return b.String()
}

// systemdRun is the state of one RunSystemd.
type systemdRun struct {
	l    *Lab
	o    SystemdOptions
	vm   *VM
	rep  *SystemdReport
	sent int // mails injected into the VM's Postfix so far
	// expectBounces counts mails refused on purpose (the virus).
	expectBounces int
	// expectedRefusals are journal lines in which the sandbox refused
	// what the run made it refuse (LDAP before its IPAddressAllow=).
	expectedRefusals map[string]bool
}

// The mailbox the run delivers to; its Maildir is on the NFS mount.
const (
	sdUser    = "alice@example.org"
	sdPass    = "secret"
	sdMaildir = "/var/mail/nfsdrop/example.org/alice/Maildir"
	sdRepo    = ":8080"
)

// RunSystemd boots a Debian machine with systemd as PID 1 on the lab
// network, its mail root an NFS mount from the lab's filer in /etc/fstab,
// installs nfsdrop from the APT repository with apt-get, points Postfix
// at nfsdrop-lmtp.socket and checks what issue 17 lists, one step at a
// time. A failed step is reported and the run goes on where it can.
func RunSystemd(ctx context.Context, l *Lab, o SystemdOptions) (*SystemdReport, error) {
	if o.PreviousVersion == "" {
		o.PreviousVersion = "0.0.9"
	}
	if o.Messages == 0 {
		o.Messages = 40
	}
	r := &systemdRun{l: l, o: o, rep: &SystemdReport{Security: map[string]string{}}, expectedRefusals: map[string]bool{}}
	if err := r.prepare(ctx); err != nil {
		return r.rep, err
	}
	defer r.vm.Kill()
	r.steps(ctx)
	return r.rep, nil
}

// step runs f as a named step and records its outcome.
func (r *systemdRun) step(name string, f func() (string, error)) bool {
	t0 := time.Now()
	details, err := f()
	r.rep.Steps = append(r.rep.Steps, SystemdStep{Name: name, Took: time.Since(t0), Err: err, Details: details})
	if err != nil {
		r.l.logf("systemd: %s: FAIL: %v", name, err)
	} else {
		r.l.logf("systemd: %s: ok %s", name, details)
	}
	return err == nil
}

// sh runs a command in the VM and fails unless it exits 0.
func (r *systemdRun) sh(ctx context.Context, command string) (string, error) {
	out, code, err := r.vm.Exec(ctx, command)
	if err != nil {
		return out, err
	}
	if code != 0 {
		return out, fmt.Errorf("%s: exit %d: %s", command, code, strings.TrimSpace(tailString(out, 1500)))
	}
	return strings.TrimSpace(out), nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// prepare builds the packages (unless given), serves the repository,
// packs the disk and boots the VM.
func (r *systemdRun) prepare(ctx context.Context) error {
	l := r.l
	if r.o.Dist == "" {
		r.o.Dist = filepath.Join(l.Dir, "dist")
		previous := r.o.PreviousVersion
		if !r.o.Long {
			previous = "" // nothing to upgrade from in the short run
		}
		if err := BuildPackages(ctx, r.o.Dist, previous, l.logf); err != nil {
			return err
		}
	}
	// The filer's export: the mount marker, so that nfsdrop delivers.
	if err := os.WriteFile(filepath.Join(l.Export, ".nfsdrop-mounted"), nil, 0o644); err != nil {
		return err
	}
	if err := l.NFS.Start(ctx); err != nil {
		return err
	}
	ln, err := l.Net.Listen(l.Net.Client, "tcp", ClientAddr+sdRepo)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(r.o.Dist)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	context.AfterFunc(ctx, func() { srv.Close() })

	img, err := l.PrepareSystemdImage(ctx)
	if err != nil {
		return err
	}
	r.rep.RootBuild = img.RootBuild
	agent := filepath.Join(l.Dir, "labagent")
	if err := l.GoBuild(ctx, "./contrib/lab/cmd/labagent", agent); err != nil {
		return err
	}
	agentBin, err := os.ReadFile(agent)
	if err != nil {
		return err
	}
	host, addr := "mx1.test", VMAddr(1)
	files := map[string]string{
		"usr/local/sbin/labagent": string(agentBin),
		"etc/lab.env":             "LAB_IP=" + addr + "\n",
		"etc/hostname":            host + "\n",
		"etc/mailname":            host + "\n",
		"etc/hosts":               "127.0.0.1 localhost\n" + addr + " " + host + " mx1\n" + ServerAddr + " filer\n" + ClientAddr + " repo\n",
		// The mail root: an NFS mount at boot, ordered by
		// remote-fs.target (_netdev: it needs the network).
		"etc/fstab": "/dev/vda / ext4 rw 0 1\n" +
			l.NFS.Source() + " /var/mail/nfsdrop nfs vers=3,nolock,proto=tcp,hard,_netdev 0 0\n",
	}
	disk := filepath.Join(l.Dir, "mx1.img")
	t0 := time.Now()
	if err := l.PackImage(ctx, img, files, disk, 3072); err != nil {
		return err
	}
	r.rep.ImagePack = time.Since(t0)
	r.vm = l.NewVM(VMConfig{
		N: 1, Host: host, MemMB: 1024, Stay: true,
		Initramfs: img.Initramfs, Disk: disk,
		Append: "root=/dev/vda net.ifnames=0 systemd.show_status=0",
	})
	return r.boot(ctx, &r.rep.Boot)
}

// boot starts the VM and waits for the agent and for systemd to settle.
func (r *systemdRun) boot(ctx context.Context, took *time.Duration) error {
	if err := r.vm.Start(ctx); err != nil {
		return err
	}
	d, err := r.vm.WaitReady(ctx, 5*time.Minute)
	if err != nil {
		return err
	}
	*took = d
	out, _, err := r.vm.Exec(ctx, "systemctl is-system-running --wait; systemctl --failed --no-legend --plain")
	if err != nil {
		return err
	}
	r.l.logf("systemd VM up in %v: %s", d.Round(time.Second), strings.Join(strings.Fields(out), " "))
	return nil
}

// BuildPackages runs packaging/build.sh into dist: previous (the same
// code, an older version number, unless ""), so that the repositories
// offer an upgrade, then this version (the file VERSION).
func BuildPackages(ctx context.Context, dist, previous string, logf func(string, ...any)) error {
	build := filepath.Join(RepoRoot(), "packaging", "build.sh")
	logf("building the packages (%q and this version) into %s", previous, dist)
	builds := [][]string{nil}
	if previous != "" {
		builds = [][]string{{"NFSDROP_VERSION=" + previous}, nil}
	}
	for _, env := range builds {
		cmd := exec.CommandContext(ctx, "bash", build, "-o", dist)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("lab: build.sh %v: %v\n%s", env, err, tail(out, 3000))
		}
	}
	return nil
}

// countMail is the number of messages in alice's new/ and cur/.
func (r *systemdRun) countMail(ctx context.Context) (int, error) {
	out, err := r.sh(ctx, "ls "+sdMaildir+"/new "+sdMaildir+"/cur 2>/dev/null | grep -c '^[0-9]' || true")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// waitMail waits until alice has want messages and Postfix's queue is
// empty.
func (r *systemdRun) waitMail(ctx context.Context, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := r.countMail(ctx)
		if err != nil {
			return err
		}
		q, _ := r.sh(ctx, "postqueue -j | wc -l")
		if n == want && q == "0" {
			return nil
		}
		if n > want {
			return fmt.Errorf("%d messages in the Maildir, %d sent: doubled", n, want)
		}
		if time.Now().After(deadline) {
			queue, _ := r.sh(ctx, "postqueue -p | tail -20")
			return fmt.Errorf("%d of %d messages arrived, %s queued after %v:\n%s", n, want, q, timeout, queue)
		}
		time.Sleep(time.Second)
	}
}

// send injects n mails into Postfix with sendmail, one by one, in the VM.
func (r *systemdRun) send(ctx context.Context, n int, tag string) error {
	cmd := fmt.Sprintf("for i in $(seq 1 %d); do printf 'Subject: %s %%s\\n\\nmessage %%s\\n' $i $i | sendmail -f sender@example.net %s || exit 1; done", n, tag, sdUser)
	if _, err := r.sh(ctx, cmd); err != nil {
		return err
	}
	r.sent += n
	return nil
}

// sendBackground starts sending n mails in the VM, one every 0.1 s, and
// returns at once; waitMail tells when they all arrived.
func (r *systemdRun) sendBackground(ctx context.Context, n int, tag string) error {
	cmd := fmt.Sprintf("systemd-run --unit=lab-sender-%s --quiet sh -c \"for i in \\$(seq 1 %d); do printf 'Subject: %s %%s\\n\\nm\\n' \\$i | sendmail -f sender@example.net %s; sleep 0.1; done\"", tag, n, tag, sdUser)
	if _, err := r.sh(ctx, cmd); err != nil {
		return err
	}
	r.sent += n
	return nil
}

// waitSender waits for a sendBackground unit to finish.
func (r *systemdRun) waitSender(ctx context.Context, tag string) error {
	for i := 0; i < 600; i++ {
		out, _, _ := r.vm.Exec(ctx, "systemctl is-active lab-sender-"+tag)
		if s := strings.TrimSpace(out); s != "active" && s != "activating" {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return errors.New("sender still running after 5 minutes")
}

func (r *systemdRun) mainPID(ctx context.Context, unit string) string {
	out, _ := r.sh(ctx, "systemctl show -p MainPID --value "+unit)
	return out
}

// bounced says how many mails Postfix bounced, beyond the virus.
func (r *systemdRun) bounced(ctx context.Context) string {
	out, _ := r.sh(ctx, "journalctl -q --no-pager -t postfix/lmtp -t postfix/local | grep -c 'status=bounced' || true")
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return strconv.Itoa(n - r.expectBounces)
}

// noBounces fails when Postfix bounced a mail the run did not mean it to.
func (r *systemdRun) noBounces(ctx context.Context) (string, error) {
	if n := r.bounced(ctx); n != "0" {
		return "", fmt.Errorf("%s mails bounced", n)
	}
	return "nothing bounced", nil
}
