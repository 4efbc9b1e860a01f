// Package fsgate keeps a hung or dead filer from taking the whole process
// down with it.
//
// On a hard NFS mount (which doctor requires: a soft mount can lose a
// write it reported as done) a call to a filer that stopped answering
// never returns. Each such call holds a goroutine and, because it is
// stuck in the kernel, an OS thread; Go stops the program at 10,000
// threads, and long before that every delivery and login that touches the
// mount is stuck too, including those of users on other filers when they
// wait behind the same locks or connection slots.
//
// A Gate wraps one volume's store.FS. Every call — the FS methods and the
// methods of the File and Dir values it hands out — first takes one of
// MaxCalls slots: so at most MaxCalls goroutines (and threads) can ever
// be stuck in this volume's filer. A call that cannot get a slot within
// CallWait fails; while a health probe says the volume is down every call
// fails at once. Both failures are temporary (*failure.Error wrapping
// syscall.ETIMEDOUT), so the store answers 4xx / [SYS/TEMP] and never
// mistakes a refusal for ENOENT or EEXIST (which it would read as a lost
// NFS reply or a missing mailbox).
package fsgate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Defaults of Options' zero fields (the same as the configuration's).
const (
	DefaultMaxCalls      = 64
	DefaultCallWait      = 2 * time.Second
	DefaultProbeInterval = 2 * time.Second
	DefaultProbeTimeout  = 5 * time.Second
)

// Reasons a call is refused (the label of the refusals metric).
const (
	ReasonDown = "down" // the health probe says the volume is down
	ReasonBusy = "busy" // no slot within CallWait: MaxCalls calls are in flight
	ReasonSlow = "slow" // a lookup not answered within LookupTimeout was given up
)

// Observer receives one gate's measurements (internal/metrics implements
// it, bound to the gate's volume).
type Observer interface {
	// VolumeUp reports the volume's health as the probe last saw it.
	VolumeUp(up bool)
	// CallsInFlight reports how many calls hold a slot now.
	CallsInFlight(n int)
	// CallRefused reports a call refused for reason (ReasonDown, ReasonBusy).
	CallRefused(reason string)
}

// Options configures a Gate.
type Options struct {
	// Volume names the volume in logs, errors and metrics.
	Volume string
	// MaxCalls bounds the calls in flight on the volume (0: DefaultMaxCalls).
	MaxCalls int
	// CallWait is how long a call waits for a slot (0: DefaultCallWait).
	CallWait time.Duration
	// Probe tells whether the volume answers (e.g. an lstat of its mount
	// marker); it is given the inner, ungated FS. nil: Run probes nothing
	// and the volume stays up.
	Probe func(fs store.FS) error
	// ProbeInterval is the time between probes (0: DefaultProbeInterval);
	// ProbeTimeout how long a probe may take before the volume is marked
	// down (0: DefaultProbeTimeout).
	ProbeInterval, ProbeTimeout time.Duration
	// LookupTimeout is how long a caller waits for a call that changes
	// nothing on the filer (a lookup, reading a link or a directory,
	// opening a directory) before it is given up (0: ProbeTimeout).
	LookupTimeout time.Duration
	// Logger receives the up/down transitions; nil discards.
	Logger *slog.Logger
	// Observer receives measurements; nil discards.
	Observer Observer
}

// Gate bounds and guards the calls to one volume's filesystem.
type Gate struct {
	inner store.FS
	o     Options
	log   atomic.Pointer[slog.Logger] // swapped when a reload keeps the gate (Pool)
	obs   Observer
	// slots holds one token per call in flight.
	slots chan struct{}

	mu        sync.Mutex
	down      error     // nil when up; else why the volume was marked down
	downSince time.Time // when it was marked down
}

// New wraps inner. The gate starts up; Run keeps its health current.
func New(inner store.FS, o Options) *Gate {
	if o.MaxCalls <= 0 {
		o.MaxCalls = DefaultMaxCalls
	}
	if o.CallWait <= 0 {
		o.CallWait = DefaultCallWait
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = DefaultProbeInterval
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = DefaultProbeTimeout
	}
	if o.LookupTimeout <= 0 {
		o.LookupTimeout = o.ProbeTimeout
	}
	g := &Gate{inner: inner, o: o, obs: o.Observer, slots: make(chan struct{}, o.MaxCalls)}
	g.SetLogger(o.Logger)
	if g.obs == nil {
		g.obs = nopObserver{}
	}
	g.obs.VolumeUp(true)
	g.obs.CallsInFlight(0)
	return g
}

// ForVolume is the gate of a configured volume: its probe is an lstat of
// the volume's mount marker (path/marker), through inner (nil: the real
// filesystem). A missing marker is a probe failure too: an unmounted
// filer shows the empty local directory below its mount point.
func ForVolume(inner store.FS, path, marker string, o Options) *Gate {
	if inner == nil {
		inner = store.OSFS{}
	}
	if o.Probe == nil {
		o.Probe = MarkerProbe(filepath.Join(path, marker))
	}
	return New(inner, o)
}

// MarkerProbe is a probe that lstats name.
func MarkerProbe(name string) func(store.FS) error {
	return func(fsys store.FS) error {
		_, err := fsys.Lstat(name)
		return err
	}
}

// inheritHealth starts g, a new gate, with old's health: a reload that
// changed a volume's settings during a hang must not start it up.
func (g *Gate) inheritHealth(old *Gate) {
	old.mu.Lock()
	down, since := old.down, old.downSince
	old.mu.Unlock()
	g.mu.Lock()
	g.down, g.downSince = down, since
	g.mu.Unlock()
	g.obs.VolumeUp(down == nil)
}

// SetLogger makes l (nil: discard) receive the up/down transitions (a
// reloaded configuration's logger, for a gate the reload kept).
func (g *Gate) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	g.log.Store(l)
}

// FS is the gated filesystem to give the volume's store.
func (g *Gate) FS() store.FS { return gatedFS{g: g} }

// Err is nil while the volume is up; otherwise a temporary *failure.Error
// saying the volume is unavailable (for a check before any FS call, such
// as at RCPT time).
func (g *Gate) Err() error {
	g.mu.Lock()
	down := g.down
	g.mu.Unlock()
	if down == nil {
		return nil
	}
	return g.refusal(ReasonDown)
}

// RefusedError is the cause of every refused call. It unwraps to
// syscall.ETIMEDOUT, which the store classifies as temporary and which
// is never ENOENT or EEXIST.
type RefusedError struct {
	Volume string
	// Reason is ReasonDown or ReasonBusy.
	Reason string
}

func (e *RefusedError) Error() string {
	switch e.Reason {
	case ReasonBusy:
		return fmt.Sprintf("volume %s: too many filesystem calls in flight", e.Volume)
	case ReasonSlow:
		return fmt.Sprintf("volume %s did not answer a lookup in time", e.Volume)
	}
	return fmt.Sprintf("volume %s is not answering", e.Volume)
}

func (e *RefusedError) Unwrap() error { return syscall.ETIMEDOUT }

// IsRefused reports whether err is a call the gate refused (the call
// never reached the filesystem).
func IsRefused(err error) bool {
	var r *RefusedError
	return errors.As(err, &r)
}

func (g *Gate) refusal(reason string) error {
	return &failure.Error{Kind: failure.Temporary, Op: "volume " + g.o.Volume,
		Reason: "mail volume unavailable", Err: &RefusedError{Volume: g.o.Volume, Reason: reason}}
}

// acquire takes a slot: at once when one is free, else within CallWait;
// never while the volume is down.
func (g *Gate) acquire() error {
	if g.Err() != nil {
		g.obs.CallRefused(ReasonDown)
		return g.refusal(ReasonDown)
	}
	select {
	case g.slots <- struct{}{}:
		g.obs.CallsInFlight(len(g.slots))
		return nil
	default:
	}
	t := time.NewTimer(g.o.CallWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		g.obs.CallsInFlight(len(g.slots))
		return nil
	case <-t.C:
		g.obs.CallRefused(ReasonBusy)
		return g.refusal(ReasonBusy)
	}
}

func (g *Gate) release() {
	<-g.slots
	g.obs.CallsInFlight(len(g.slots))
}

// do runs call holding a slot.
// Volume is the name of the volume the gate guards.
func (g *Gate) Volume() string { return g.o.Volume }

// DoLookup is Do for work that changes nothing on the filer (resolving a
// path): given up after LookupTimeout, as the gated lookups are.
func (g *Gate) DoLookup(call func() error) error {
	_, err := lookup(g, func() (struct{}, error) { return struct{}{}, call() }, nil)
	return err
}

// lookup runs a call that changes nothing on the filer and whose caller
// can do without an answer (LstatFresh, Readlink, ReadDirNames, OpenDir
// by path, and DoLookup). The caller waits for it at
// most LookupTimeout, then gets a temporary failure while the call goes
// on in its own goroutine, keeping its slot until the kernel answers (so
// the bound on calls in flight, and on threads, holds) and handing what
// it returns late to release (closing a directory). A hung filer then
// holds up an RCPT or a login for LookupTimeout, not until it answers
// again, which a client gives up on long before. A lookup can be given up
// without harm; a call that changes something cannot (its effect may
// still happen after the caller was told it failed), so those are waited
// for.
func lookup[T any](g *Gate, call func() (T, error), release func(T)) (T, error) {
	var zero T
	if err := g.acquire(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		v, err := call()
		g.answered(start)
		done <- result{v, err}
	}()
	t := time.NewTimer(g.o.LookupTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		g.release()
		return r.v, r.err
	case <-t.C:
	}
	go func() {
		r := <-done
		if r.err == nil && release != nil {
			release(r.v)
		}
		g.release()
	}()
	g.obs.CallRefused(ReasonSlow)
	return zero, g.refusal(ReasonSlow)
}

func (g *Gate) do(call func() error) error {
	if err := g.acquire(); err != nil {
		return err
	}
	defer g.release()
	start := time.Now()
	err := call()
	g.answered(start)
	return err
}

// answered notes that a call started at start has returned. One that was
// in flight for at least ProbeTimeout, and so across the volume going
// down, was held by the filer and is now answered: the filer is back.
// The volume is marked up at once rather than when the probe, stuck in
// the same outage, returns a moment later: in between, the caller's next
// calls (the rest of a delivery whose rename into new/ was just carried
// out) would be refused, and a 4xx for a message already in new/ is a
// duplicate. A call answered from the client's cache is quick and proves
// nothing, hence the duration.
func (g *Gate) answered(start time.Time) {
	if time.Since(start) < g.o.ProbeTimeout {
		return
	}
	g.mu.Lock()
	heldAcross := g.down != nil && start.Before(g.downSince)
	downSince := g.downSince
	if heldAcross {
		// Checked and changed under one lock: a probe marking a new
		// outage meanwhile is not undone.
		g.down = nil
	}
	g.mu.Unlock()
	if heldAcross {
		g.log.Load().Warn("volume up again: a call held by the filer was answered", "volume", g.o.Volume, "down_for", time.Since(downSince).Round(time.Second))
		g.obs.VolumeUp(true)
	}
}

// closeGated closes a File or Dir: with a slot like any call, but a
// descriptor must never leak, so a close that cannot have a slot now
// (volume down, or none free within CallWait) is handed to a goroutine
// that waits for one without a deadline. That goroutine waits on a
// channel, not in the kernel (it holds no thread), and takes the slot
// like any call, so the bound holds. The caller is told the close
// failed: for a file just written that is a failed delivery (temporary),
// which is true, since its data is not known to be on the filer.
func (g *Gate) closeGated(closeFn func() error) error {
	err := g.acquire()
	if err == nil {
		defer g.release()
		return closeFn()
	}
	go func() {
		g.slots <- struct{}{}
		g.obs.CallsInFlight(len(g.slots))
		defer g.release()
		closeFn()
	}()
	return err
}

// Run probes the volume every ProbeInterval until ctx is done. At most
// one probe is in flight: a probe stuck in the kernel is not repeated
// (that would pile up threads on the hung filer); the volume is marked
// down when the probe fails or takes longer than ProbeTimeout, and up
// again as soon as a probe answers.
func (g *Gate) Run(ctx context.Context) {
	if g.o.Probe == nil {
		return
	}
	for {
		if !g.probe(ctx) {
			return
		}
		t := time.NewTimer(g.o.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// probe runs one probe to its end (however long it takes) and records
// the volume's health; false when ctx ended first.
func (g *Gate) probe(ctx context.Context) bool {
	result := make(chan error, 1) // buffered: a probe outliving Run still ends
	go func() { result <- g.o.Probe(g.inner) }()
	deadline := time.NewTimer(g.o.ProbeTimeout)
	defer deadline.Stop()
	select {
	case err := <-result:
		g.record(err)
		return true
	case <-deadline.C:
		g.record(fmt.Errorf("probe not answered within %v: %w", g.o.ProbeTimeout, syscall.ETIMEDOUT))
	case <-ctx.Done():
		return false
	}
	select {
	case err := <-result:
		g.record(err)
		return true
	case <-ctx.Done():
		return false
	}
}

// record sets the volume's health from a probe's result, logging a
// change once.
func (g *Gate) record(probeErr error) {
	g.mu.Lock()
	wasUp := g.down == nil
	g.down = probeErr
	if wasUp && probeErr != nil {
		g.downSince = time.Now()
	}
	downSince := g.downSince
	g.mu.Unlock()
	switch {
	case wasUp && probeErr != nil:
		g.log.Load().Error("volume down: its filesystem calls fail until it answers again", "volume", g.o.Volume, "err", probeErr)
		g.obs.VolumeUp(false)
	case !wasUp && probeErr == nil:
		// Warn, not Info: a site logging at warn, which saw the volume
		// go down, must see it come back too.
		g.log.Load().Warn("volume up again", "volume", g.o.Volume, "down_for", time.Since(downSince).Round(time.Second))
		g.obs.VolumeUp(true)
	}
}

type nopObserver struct{}

func (nopObserver) VolumeUp(bool)      {}
func (nopObserver) CallsInFlight(int)  {}
func (nopObserver) CallRefused(string) {}

// gatedFS is store.FS with every call through the gate.
type gatedFS struct{ g *Gate }

var _ store.FS = gatedFS{}

func (f gatedFS) OpenFile(name string, flag int, perm fs.FileMode) (store.File, error) {
	var file store.File
	err := f.g.do(func() error {
		var err error
		file, err = f.g.inner.OpenFile(name, flag, perm)
		return err
	})
	if err != nil {
		return nil, err
	}
	return gatedFile{g: f.g, f: file}, nil
}

func (f gatedFS) CreateAs(name string, flag int, perm fs.FileMode, uid, gid int) (store.File, error) {
	var file store.File
	err := f.g.do(func() error {
		var err error
		file, err = f.g.inner.CreateAs(name, flag, perm, uid, gid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return gatedFile{g: f.g, f: file}, nil
}

func (f gatedFS) DirOpsSynchronous(name string) (bool, error) {
	var sync bool
	err := f.g.do(func() error { var err error; sync, err = f.g.inner.DirOpsSynchronous(name); return err })
	return sync, err
}

func (f gatedFS) Link(oldname, newname string) error {
	return f.g.do(func() error { return f.g.inner.Link(oldname, newname) })
}

func (f gatedFS) Rename(oldname, newname string) error {
	return f.g.do(func() error { return f.g.inner.Rename(oldname, newname) })
}

func (f gatedFS) Remove(name string) error {
	return f.g.do(func() error { return f.g.inner.Remove(name) })
}

// Lstat is waited for, not given up: the store's verification of a
// LINK or RENAME whose reply was lost rests on it, and "cannot tell"
// there would be answered as "not published" (a duplicate).
func (f gatedFS) Lstat(name string) (store.Info, error) {
	var info store.Info
	err := f.g.do(func() error { var err error; info, err = f.g.inner.Lstat(name); return err })
	return info, err
}

func (f gatedFS) Mkdir(name string, perm fs.FileMode) error {
	return f.g.do(func() error { return f.g.inner.Mkdir(name, perm) })
}

func (f gatedFS) Lchown(name string, uid, gid int) error {
	return f.g.do(func() error { return f.g.inner.Lchown(name, uid, gid) })
}

func (f gatedFS) SyncDir(name string) error {
	return f.g.do(func() error { return f.g.inner.SyncDir(name) })
}

func (f gatedFS) ReadDirNames(name string) ([]string, error) {
	return lookup(f.g, func() ([]string, error) { return f.g.inner.ReadDirNames(name) }, nil)
}

func (f gatedFS) TouchNow(name string) error {
	return f.g.do(func() error { return f.g.inner.TouchNow(name) })
}

func (f gatedFS) Symlink(target, name string) error {
	return f.g.do(func() error { return f.g.inner.Symlink(target, name) })
}

func (f gatedFS) Readlink(name string) (string, error) {
	return lookup(f.g, func() (string, error) { return f.g.inner.Readlink(name) }, nil)
}

func (f gatedFS) LstatFresh(name string) (store.Info, error) {
	return lookup(f.g, func() (store.Info, error) { return f.g.inner.LstatFresh(name) }, nil)
}

func (f gatedFS) OpenDir(name string) (store.Dir, error) {
	d, err := lookup(f.g, func() (store.Dir, error) { return f.g.inner.OpenDir(name) }, closeDir)
	if err != nil {
		return nil, err
	}
	return gatedDir{g: f.g, d: d}, nil
}

// gatedFile is a store.File whose every call goes through the gate.
type gatedFile struct {
	g *Gate
	f store.File
}

func (f gatedFile) Write(p []byte) (int, error) {
	n := 0
	err := f.g.do(func() error { var err error; n, err = f.f.Write(p); return err })
	return n, err
}

func (f gatedFile) Read(p []byte) (int, error) {
	n := 0
	err := f.g.do(func() error { var err error; n, err = f.f.Read(p); return err })
	return n, err
}

func (f gatedFile) Sync() error  { return f.g.do(f.f.Sync) }
func (f gatedFile) Close() error { return f.g.closeGated(f.f.Close) }
func (f gatedFile) Chown(uid, gid int) error {
	return f.g.do(func() error { return f.f.Chown(uid, gid) })
}

func (f gatedFile) Stat() (store.Info, error) {
	var info store.Info
	err := f.g.do(func() error { var err error; info, err = f.f.Stat(); return err })
	return info, err
}

// gatedDir is a store.Dir whose calls go through the gate. Path and Name
// make no system call and are not gated: the paths Path gives are used
// with the gated FS methods.
type gatedDir struct {
	g *Gate
	d store.Dir
}

func (d gatedDir) Path() string { return d.d.Path() }
func (d gatedDir) Name() string { return d.d.Name() }
func (d gatedDir) Close() error { return d.g.closeGated(d.d.Close) }

// ID and OpenBeneath are waited for, not given up: they use the
// directory's descriptor, which its owner may close as soon as the call
// returns to it.
func (d gatedDir) ID() (store.Info, error) {
	var info store.Info
	err := d.g.do(func() error { var err error; info, err = d.d.ID(); return err })
	return info, err
}

func (d gatedDir) OpenBeneath(rel string, trustUID int) (store.Dir, error) {
	var sub store.Dir
	err := d.g.do(func() error { var err error; sub, err = d.d.OpenBeneath(rel, trustUID); return err })
	if err != nil {
		return nil, err
	}
	return gatedDir{g: d.g, d: sub}, nil
}

// closeDir closes a directory opened after its caller gave up on it.
func closeDir(d store.Dir) { d.Close() }
