package lab

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// TestFilers is the short version of the filers run (RunFilers;
// nfsdrop-lab -filers is the long one): two front ends with a volume on
// nfs-ganesha and one on the kernel NFS server VM, the load through
// HAProxy and Postfix, the kernel server SIGKILLed and restarted, then
// cut off for 15 s (NFSDROP_LAB_FILERS_LINKDOWN, a duration; held longer
// while mx1's daemons, sent SIGTERM during it, exit and start again: each
// must exit within labStopBound), a baseline
// and "after" windows of 10 s (NFSDROP_LAB_FILERS_PHASE). Every invariant
// must hold. When the nfsdrop binary cannot load a configuration with
// [[store.volumes]] (issue 16's volumes not merged), the front ends run
// the daemons as today's product can (one mail_root over both mounts, the
// homes absolute paths on each filer: no per-volume guard, no move), and
// the same invariants hold but lock recovery (today a session stuck on
// the dead filer holds its mailbox longer than lock_stale); with NFSDROP_LAB_FILERS_STUB=1 they run
// stand-ins and the test checks the infrastructure alone: both filers,
// the mounts, the faults, the per-volume counters and the thread sampling
// over the control channel.
func TestFilers(t *testing.T) {
	phase, linkDown := 10*time.Second, 15*time.Second
	for env, d := range map[string]*time.Duration{"NFSDROP_LAB_FILERS_PHASE": &phase, "NFSDROP_LAB_FILERS_LINKDOWN": &linkDown} {
		if s := os.Getenv(env); s != "" {
			v, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("%s=%q: %v", env, s, err)
			}
			*d = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute+2*linkDown+6*phase+labStopBound)
	defer cancel()
	l := newTestLab(t, ctx)
	testenv.Require(t, "haproxy", "haproxy")
	testenv.Require(t, "postfix", "postfix", "postqueue")
	rep, err := RunFilers(ctx, l, FilersOptions{VMs: 2, UsersPerVolume: 3, NFSDrop: testenv.Binary(t), Phase: phase, LinkDown: linkDown,
		Stub: os.Getenv("NFSDROP_LAB_FILERS_STUB") == "1"})
	if rep != nil {
		t.Logf("report:\n%s", rep)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		t.Error(p)
	}
	if len(rep.Phases) != 4 {
		t.Fatalf("%d phases, want 4", len(rep.Phases))
	}
	// The sampler read both daemons' threads on both front ends (how
	// often depends on the host's load: the report counts the misses).
	seen := map[string]bool{}
	for _, p := range rep.Phases {
		for _, w := range p.Windows {
			for k, n := range w.PeakThreads {
				seen[k] = seen[k] || n > 0
			}
		}
	}
	for _, key := range []string{"mx1 lmtpd", "mx1 pop3d", "mx2 lmtpd", "mx2 pop3d"} {
		if !seen[key] {
			t.Errorf("no thread reading of %s in the whole run", key)
		}
	}
	if rep.Stub {
		t.Logf("the front ends ran stand-ins: infrastructure only (%s)", rep.ModeReason)
		return
	}
	r := rep.Load
	// The binary under test has [[store.volumes]]: a fallback to the
	// legacy layout (or stand-ins) would prove nothing about volumes.
	if rep.Mode != "volumes" {
		t.Errorf("the front ends ran in mode %q, want volumes (%s)", rep.Mode, rep.ModeReason)
	}
	if v := r.Violations(); v > 0 {
		t.Errorf("%d invariant violations (see the report)", v)
	}
	base := rep.Phases[0].Windows[0]
	for _, v := range FilersVolumes {
		if base.Acked[v] == 0 {
			t.Errorf("baseline: no delivery acknowledged on volume %s", v)
		}
	}
}
