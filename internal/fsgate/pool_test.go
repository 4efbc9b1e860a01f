package fsgate

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

// TestPoolKeepsGateAcrossReload: a second Get of an unchanged volume (a
// reload) returns the same gate, still down if it was down (a new gate
// would start up and let another volume_max_calls calls block on the
// hung filer); changed settings give a new gate, which starts with the
// volume's health (down); the probe of a gate stops with its last Put.
func TestPoolKeepsGateAcrossReload(t *testing.T) {
	var probes atomic.Int64
	failing := errors.New("filer not answering")
	o := Options{Volume: "v1", ProbeInterval: 5 * time.Millisecond, ProbeTimeout: time.Second,
		Probe: func(store.FS) error { probes.Add(1); return failing }}
	p := NewPool()
	g1 := p.Get("/srv/v1", ".m", o)
	waitFor(t, "the probe marks the volume down", func() bool { return g1.Err() != nil })

	g2 := p.Get("/srv/v1", ".m", o) // the reload's configuration
	if g2 != g1 {
		t.Fatal("an unchanged volume got a new gate at reload")
	}
	if g2.Err() == nil {
		t.Fatal("the kept gate forgot that the volume is down")
	}
	p.Put(g1) // the old configuration closed
	if p.Len() != 1 {
		t.Fatalf("%d gates in use, want 1", p.Len())
	}

	o2 := o
	o2.MaxCalls = 3
	g3 := p.Get("/srv/v1", ".m", o2)
	if g3 == g2 {
		t.Fatal("changed max_calls kept the old gate")
	}
	if g3.Err() == nil {
		t.Fatal("the new gate of a volume that is down started up (it would hand out slots on a hung filer)")
	}
	p.Put(g2)
	p.Put(g3)
	if p.Len() != 0 {
		t.Fatalf("%d gates in use after every Put, want 0", p.Len())
	}
	// Both probes stopped: the count stays put (one in flight may end).
	time.Sleep(20 * time.Millisecond)
	n := probes.Load()
	time.Sleep(50 * time.Millisecond)
	if m := probes.Load(); m > n+1 {
		t.Errorf("probes went on after the last Put: %d -> %d", n, m)
	}
	p.Put(g1) // not in the pool any more: ignored
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting until %s", what)
}
