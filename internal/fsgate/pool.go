package fsgate

import (
	"context"
	"sync"
	"time"
)

// Pool keeps a daemon's gates, and their health probes, across
// configuration reloads. Were a reload to build a new gate for a volume
// whose settings did not change, the calls stuck under the old gate on a
// hung filer would keep their slots while the new gate, which starts up,
// handed out volume_max_calls more: every SIGHUP during a hang would add
// that many threads blocked in the kernel. A volume whose settings are
// unchanged keeps its gate (its slots, its health and its probe); a
// changed one gets a new gate, and the old one's probe stops when the
// last configuration using it is closed.
type Pool struct {
	mu    sync.Mutex
	gates map[poolKey]*pooled
}

// poolKey is what makes two volumes' gates the same gate.
type poolKey struct {
	volume, path, marker        string
	maxCalls                    int
	callWait                    time.Duration
	probeInterval, probeTimeout time.Duration
}

type pooled struct {
	g    *Gate
	refs int
	stop context.CancelFunc
}

// NewPool makes an empty pool.
func NewPool() *Pool {
	return &Pool{gates: map[poolKey]*pooled{}}
}

// Get returns the gate of the volume at path with its mount marker and
// options o (ForVolume's arguments, on the real filesystem), running its
// probe: the same gate as an earlier Get with the same volume, path,
// marker, slots, wait and probe settings that has not been given back,
// or else a new one. A kept gate keeps its logger until the caller, once
// the configuration asking for it is in use, gives it the new one
// (SetLogger): a reload that fails must leave the running one's.
// o.Observer and o.Probe are used only for a new gate. A new gate for a
// volume that already has one (its settings changed) starts with that
// gate's health: a volume down stays down, with no new slots on a hung
// filer, until its own probe answers. Each Get is matched by a Put.
func (p *Pool) Get(path, marker string, o Options) *Gate {
	k := poolKey{volume: o.Volume, path: path, marker: marker, maxCalls: o.MaxCalls, callWait: o.CallWait,
		probeInterval: o.ProbeInterval, probeTimeout: o.ProbeTimeout}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.gates[k]; e != nil {
		e.refs++
		return e.g
	}
	g := ForVolume(nil, path, marker, o)
	for other, e := range p.gates {
		if other.volume == o.Volume {
			g.inheritHealth(e.g)
			break
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	go g.Run(ctx)
	p.gates[k] = &pooled{g: g, refs: 1, stop: stop}
	return g
}

// Put gives back a gate from Get; the last Put of a gate stops its
// probe. A gate not from this pool is ignored.
func (p *Pool) Put(g *Gate) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.gates { // a few volumes: no index needed
		if e.g != g {
			continue
		}
		if e.refs--; e.refs == 0 {
			e.stop()
			delete(p.gates, k)
		}
		return
	}
}

// Len is the number of gates in use.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.gates)
}
