package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// newTestLab builds a lab for a test; a host that cannot run one (not
// root, packages missing, no kernel package to download) fails the test
// under CI=true and skips it elsewhere. Packages are installed under CI or
// with NFSDROP_LAB_INSTALL=1.
func newTestLab(t *testing.T, ctx context.Context) *Lab {
	t.Helper()
	if testing.Short() {
		t.Skip("boots virtual machines (about a minute); skipped with -short")
	}
	install := testenv.CI() || os.Getenv("NFSDROP_LAB_INSTALL") == "1"
	keep := os.Getenv("NFSDROP_LAB_KEEP") == "1"
	l, err := New(ctx, Options{Logf: t.Logf, Install: install, KeepDir: keep})
	if IsMissing(err) {
		if testenv.CI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		// Close removed exactly what the lab made: nothing of it is left.
		if m, _ := filepath.Glob("/run/netns/ndl-" + l.ID + "-*"); len(m) > 0 {
			t.Errorf("namespaces left behind: %v", m)
		}
		for _, p := range l.procs {
			if !p.Exited() {
				t.Errorf("%s (pid %d) still running", p.Name, p.Pid())
			}
		}
		if keep {
			t.Logf("run directory kept: %s", l.Dir)
		} else if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
			t.Errorf("run directory %s left behind", l.Dir)
		}
	})
	return l
}

// TestLabBoots is the first proof on real Linux NFS clients: two VMs run
// the bare durable Maildir loop, then nfsdrop deliver in a loop into the
// same three Maildirs; every message deliver accepted must then be in new/
// exactly once.
func TestLabBoots(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := newTestLab(t, ctx)
	rep, err := RunProof(ctx, l, ProofOptions{
		VMs: 2, BareSeconds: 8, DeliverSeconds: 20, Users: 3,
		NFSDrop: testenv.Binary(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", rep)
	for _, p := range rep.Problems {
		t.Error(p)
	}
	for _, v := range rep.VMs {
		if v.BareFiles == 0 {
			t.Errorf("%s: the bare loop made no file", v.Host)
		}
		if v.Deliveries == 0 || v.DeliverFailed == v.Deliveries {
			t.Errorf("%s: no delivery succeeded (exit codes %v); stderr:\n%s", v.Host, v.ExitCodes, tail([]byte(v.DeliverErrors), 2000))
		} else if v.DeliverFailed > 0 {
			t.Errorf("%s: %d of %d deliveries failed (exit codes %v); stderr:\n%s", v.Host, v.DeliverFailed, v.Deliveries, v.ExitCodes, tail([]byte(v.DeliverErrors), 2000))
		}
		if v.DeliverOps == nil || v.DeliverOps.Ops["CREATE"].Ops == 0 || v.DeliverOps.Ops["COMMIT"].Ops+v.DeliverOps.Ops["WRITE"].Ops == 0 {
			t.Errorf("%s: the NFS counters show no CREATE/WRITE during deliveries", v.Host)
		}
	}
}

// TestLabControl runs nfsdrop lmtpd on two VMs, mx1 on NFSv3 and mx2 on
// NFSv4.1 (with the options docs/nfs.md recommends), both delivering into
// the same Maildirs, and checks the controls that fault tests use: LMTP
// from the client namespace to either VM, the control port (ping, exec,
// mountstats), netem in the guest (on all traffic, and toward the filer
// only), cutting the link, a filer crash and restart under a hard NFSv4.1
// mount in the middle of an LMTP delivery, and a clean power-off (SIGTERM
// to lmtpd).
func TestLabControl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := newTestLab(t, ctx)
	if err := l.PrepareNFSDrop(ctx, testenv.Binary(t), 2, 2); err != nil {
		t.Fatal(err)
	}
	script, err := l.WriteScript("lmtpd.sh", DaemonScript("lmtpd", "-c", MountPoint+"/conf/{host}.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.NFS.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v41, err := MountOptsFor("4.1", SiteMountOpts)
	if err != nil {
		t.Fatal(err)
	}
	vms, err := l.StartVMs(ctx, 2, func(i int) VMConfig {
		c := VMConfig{Script: script, Grace: 5 * time.Second}
		if i == 2 {
			c.MountOpts = v41
		}
		return c
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		boot, err := v.WaitReady(ctx, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s booted and mounted in %v", v.Host, boot)
	}
	for _, v := range vms {
		addr := v.Addr + ":24"
		if err := waitFor(ctx, time.Minute, func() bool {
			c, err := l.Net.Dial(ctx, l.Net.Client, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		}, v.proc.Exited); err != nil {
			t.Fatalf("%s: lmtpd does not listen: %v\n%s", v.Host, err, v.Console())
		}
	}
	sent := 0
	send := func(v *VM) error {
		sent++
		return lmtpSend(ctx, l, v, fmt.Sprintf("u%d@lab.test", sent%2+1), fmt.Sprintf("control %d", sent))
	}
	for i := 0; i < 6; i++ {
		if err := send(vms[i%2]); err != nil {
			t.Fatalf("LMTP: %v", err)
		}
	}

	// mx2's mount is NFSv4.1, and its deliveries opened files (OPEN is
	// NFSv4's; NFSv3 has none).
	for i, want := range []string{",vers=3,", " nfs4 rw,noatime,vers=4.1,"} {
		out, _, err := vms[i].Exec(ctx, "grep ' "+MountPoint+" ' /proc/mounts")
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("%s: mount %q (%v), want %q", vms[i].Host, out, err, want)
		}
	}
	if ms, err := vms[1].Mountstats(ctx); err != nil || ms.OpenOps() == 0 {
		t.Errorf("mx2: no NFSv4 OPEN in the counters (%v): %+v", err, ms)
	}

	v := vms[0]
	if err := v.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	out, code, err := v.Exec(ctx, "hostname && echo hello >/mnt/lab/hello && cat /mnt/lab/hello")
	if err != nil || code != 0 || out != "mx1.test\nhello\n" {
		t.Fatalf("exec: %q, exit %d, %v", out, code, err)
	}
	if err := v.Netem(ctx, 5, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	out, _, err = v.Exec(ctx, "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/local/sbin/tc qdisc show dev eth0")
	if err != nil || !strings.Contains(out, "netem") || !strings.Contains(out, "delay 20ms") {
		t.Errorf("netem not in place: %q %v", out, err)
	}
	if err := v.Netem(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.NetemTo(ctx, ServerAddr, 2*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	out, _, err = v.Exec(ctx, "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/local/sbin/tc qdisc show dev eth0; LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/local/sbin/tc filter show dev eth0")
	if err != nil || !strings.Contains(out, "qdisc prio 1:") || !strings.Contains(out, "delay 2ms") || !strings.Contains(out, "flowid 1:3") {
		t.Errorf("netem toward the filer not in place: %q %v", out, err)
	}
	if err := send(v); err != nil {
		t.Errorf("LMTP with the filer 2 ms away: %v", err)
	}
	if err := v.NetemTo(ctx, ServerAddr, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.LinkDown(ctx); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	if err := v.Ping(pctx); err == nil {
		t.Error("ping answered with the link down")
	}
	pcancel()
	if err := v.LinkUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, 20*time.Second, func() bool { return v.Ping(ctx) == nil }, nil); err != nil {
		t.Fatalf("no ping after the link came back: %v", err)
	}

	// A filer crash during a delivery: the hard mount blocks the
	// delivery, which completes once the filer is back.
	before, err := vms[1].Mountstats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idleWaiters := nfsWaiters(ctx, vms[1])
	if idleWaiters < 0 {
		t.Fatal("cannot read the threads' wait channels in mx2")
	}
	l.NFS.Kill()
	done := make(chan error, 1)
	go func() { done <- send(vms[1]) }()
	// A positive signal instead of a fixed wait: more threads in the VM
	// wait in the NFS client's RPC code than before the filer died (the
	// hard mount waiting for it), so the delivery cannot have finished.
	if err := waitFor(ctx, time.Minute, func() bool { return nfsWaiters(ctx, vms[1]) > idleWaiters }, nil); err != nil {
		t.Fatalf("no thread in mx2 blocked on the filer while it is down (%d waiting before): %v", idleWaiters, err)
	}
	t.Logf("mx2 with the filer down: %d threads wait in NFS/RPC code (%d before)", nfsWaiters(ctx, vms[1]), idleWaiters)
	select {
	case err := <-done:
		t.Fatalf("a delivery finished while the filer was down: %v", err)
	default:
	}
	if err := l.NFS.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("delivery across the filer restart: %v", err)
	}
	after, err := vms[1].Mountstats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	t.Logf("mx2 across the filer restart: %d new TCP connections, %d retransmissions, calls %s", d.XprtConnects, d.Retransmissions(), d.PerUnit(1))

	for _, v := range vms {
		if err := v.Poweroff(ctx); err != nil {
			t.Fatal(err)
		}
		if c := v.Console(); !strings.Contains(c, "nfsdrop-lab: poweroff host="+v.Host) {
			t.Errorf("%s: no clean power-off on the console:\n%s", v.Host, c)
		}
	}
	if err := l.NFS.Stop(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(l.Export, "hello")); err != nil || string(b) != "hello\n" {
		t.Errorf("the VM's write is not in the export: %q %v", b, err)
	}
	// Every message accepted over LMTP is in its user's new/ once.
	count := map[string]int{}
	for u := 1; u <= 2; u++ {
		dir := filepath.Join(l.Export, "mail", "lab.test", fmt.Sprintf("u%d", u), "Maildir", "new")
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			if m := regexp.MustCompile(`(?m)^Subject: (control \d+)\r?$`).FindSubmatch(b); m != nil {
				count[string(m[1])]++
			}
		}
	}
	for i := 1; i <= sent; i++ {
		if n := count[fmt.Sprintf("control %d", i)]; n != 1 {
			t.Errorf("message %d stored %d times", i, n)
		}
	}
}

// lmtpSend delivers one message to rcpt through v's lmtpd, from the client
// namespace.
func lmtpSend(ctx context.Context, l *Lab, v *VM, rcpt, subject string) error {
	conn, err := l.Net.Dial(ctx, l.Net.Client, "tcp", v.Addr+":24")
	if err != nil {
		return err
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("client.lab.test"); err != nil {
		return err
	}
	if err := c.Mail("sender@lab.test", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: sender@lab.test\r\nTo: %s\r\nSubject: %s\r\n\r\nHello from the client namespace.\r\n", rcpt, subject)
	if err := w.Close(); err != nil {
		return fmt.Errorf("%s via %s: %w", subject, v.Host, err)
	}
	return c.Quit()
}

// nfsWaiters counts the VM's threads sleeping in the NFS client or its RPC
// layer (their wchan), -1 when it cannot tell.
func nfsWaiters(ctx context.Context, v *VM) int {
	out, _, err := v.Exec(ctx, "for f in /proc/*/task/*/wchan; do cat $f 2>/dev/null; echo; done | grep -cE '^(rpc_|__rpc|nfs)' || true")
	n := -1
	if err == nil {
		fmt.Sscan(strings.TrimSpace(out), &n)
	}
	return n
}
