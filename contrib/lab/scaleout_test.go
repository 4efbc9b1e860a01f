package lab

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// TestScaleOut is the scale-out proof on real Linux NFS clients: three
// VMs each run lmtpd and pop3d behind HAProxy; a private Postfix delivers
// numbered, checksummed messages through HAProxy while POP3 clients keep
// and delete mail through it; a VM is killed (twice), one is cut off from
// the NFS server, the NFS server is killed and restarted, and packets are
// lost and delayed. Then every invariant must hold: nothing lost, nothing
// resurrected, nothing doubled (except what Postfix itself resent after a
// lost reply, which is counted apart), no UIDL change, no corrupt
// message, every lock recovered. NFSDROP_LAB_SCALE_SECONDS sets the
// length of the load (default 90).
func TestScaleOut(t *testing.T) {
	load := 90 * time.Second
	if s := os.Getenv("NFSDROP_LAB_SCALE_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 20 {
			t.Fatalf("NFSDROP_LAB_SCALE_SECONDS=%q: a number of seconds, at least 20", s)
		}
		load = time.Duration(n) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute+2*load)
	defer cancel()
	l := newTestLab(t, ctx)
	testenv.Require(t, "haproxy", "haproxy")
	testenv.Require(t, "postfix", "postfix", "postqueue")
	rep, err := RunScaleOut(ctx, l, ScaleOutOptions{VMs: 3, Users: 8, Load: load, NFSDrop: testenv.Binary(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", rep)
	for _, p := range rep.Problems {
		t.Error(p)
	}
	r := rep.Load
	if v := r.Violations(); v > 0 {
		t.Errorf("%d invariant violations (see the report)", v)
	}
	if len(rep.Faults) != len(DefaultFaults(3, load)) {
		t.Errorf("%d of %d faults applied", len(rep.Faults), len(DefaultFaults(3, load)))
	}
	// The run must have done enough to mean something.
	if r.Acknowledged < 100 {
		t.Errorf("only %d messages delivered", r.Acknowledged)
	}
	if r.Commits < 10 || r.DeletedRetrievals < 50 {
		t.Errorf("only %d committed POP3 deletions of %d messages", r.Commits, r.DeletedRetrievals)
	}
	// Hard mounts block, they do not fail. The one temporary answer
	// allowed is the hung-filer gate's: while the filer is dead (6 s,
	// longer than store.volume_probe_timeout) its volume is marked down
	// and RCPTs and logins get 451 / [SYS/TEMP] at once instead of
	// waiting. No other error from nfsdrop may reach Postfix ("said:
	// 4..") or a POP3 client.
	volumeDown := func(s string) bool {
		return strings.Contains(s, "mail storage unavailable") || strings.Contains(s, "mail volume unavailable")
	}
	for reason, n := range r.DeferReasons {
		if strings.Contains(reason, "said:") && !volumeDown(reason) {
			t.Errorf("nfsdrop answered a delivery with an error %d times: %s", n, reason)
		}
	}
	for reply, n := range r.LoginErrors {
		if !volumeDown(reply) {
			t.Errorf("POP3 login failed %d times: %s", n, reply)
		}
	}
	if len(r.DeliveredBy) < 3 || len(r.SessionsBy) < 3 {
		t.Errorf("not every VM served: deliveries %v, POP3 sessions %v", r.DeliveredBy, r.SessionsBy)
	}
}
