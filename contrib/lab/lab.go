package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// Options configures a lab.
type Options struct {
	// CacheDir holds the kernel, modules and busybox between runs
	// (default DefaultCacheDir()).
	CacheDir string
	// Dir is the run directory: logs, the initramfs, the NFS server's
	// files and the exported directory. Default: a new directory under
	// /var/tmp, removed by Close unless KeepDir.
	Dir     string
	KeepDir bool
	// Install lets the lab install missing Debian packages with apt-get.
	Install bool
	// Modules are the kernel modules the VMs load (default DefaultModules).
	Modules []string
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
}

// Lab is one running lab: its namespaces, NFS server and VMs.
type Lab struct {
	// ID is the short random name of this run; every namespace, file
	// and process of the run carries it.
	ID string
	// Dir is the run directory; Export is the exported directory in it,
	// mounted by every VM at MountPoint.
	Dir, Export string
	Assets      *Assets
	// Initramfs is the VMs' initramfs.
	Initramfs string
	Net       *Net
	NFS       *NFSServer

	opts  Options
	logf  func(string, ...any)
	state *state

	mu    sync.Mutex
	procs []*Proc
	vms   []*VM

	closeOnce sync.Once
	closeErr  error
}

// MountPoint is where the VMs mount the export.
const MountPoint = "/mnt/lab"

// New builds a lab: checks the host, prepares the assets, builds the
// initramfs, makes the namespaces and the exported directory. The NFS
// server is not started: write the export's files first, then call
// l.NFS.Start (ganesha caches what it serves, so the export should change
// only while it is stopped or through a VM). On error, everything made so
// far is removed. Close the lab when done.
func New(ctx context.Context, opts Options) (l *Lab, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir()
	}
	if err := EnsureHost(ctx, opts.Install, opts.Logf); err != nil {
		return nil, err
	}
	CleanStale(opts.Logf)

	l = &Lab{ID: newID(), opts: opts, logf: opts.Logf}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	l.Dir = opts.Dir
	if l.Dir == "" {
		if l.Dir, err = os.MkdirTemp("/var/tmp", "nfsdrop-lab-"+l.ID+"-"); err != nil {
			return l, err
		}
	} else if err = os.MkdirAll(l.Dir, 0o755); err != nil {
		return l, err
	}
	if err = os.Chmod(l.Dir, 0o755); err != nil {
		return l, err
	}
	l.state, err = newState(l.ID, l.Dir)
	if err != nil {
		return l, err
	}
	l.Export = filepath.Join(l.Dir, "export")
	for _, d := range []string{l.Export, filepath.Join(l.Dir, "logs")} {
		if err = os.MkdirAll(d, 0o755); err != nil {
			return l, err
		}
	}

	t0 := time.Now()
	if l.Assets, err = PrepareAssets(ctx, opts.CacheDir, opts.Modules, l.logf); err != nil {
		return l, err
	}
	labmount := filepath.Join(l.Dir, "labmount")
	if err = l.GoBuild(ctx, "./contrib/lab/cmd/labmount", labmount); err != nil {
		return l, err
	}
	l.Initramfs = filepath.Join(l.Dir, "initramfs.gz")
	if err = BuildInitramfs(ctx, l.Assets, labmount, l.Initramfs); err != nil {
		return l, err
	}
	l.logf("lab %s: kernel %s, initramfs ready in %v", l.ID, l.Assets.KernelVersion, time.Since(t0).Round(time.Millisecond))

	if l.Net, err = newNet(ctx, l); err != nil {
		return l, err
	}
	l.NFS = newNFSServer(l)
	return l, nil
}

// Close stops every VM and server of the lab by PID, deletes its
// namespaces, and removes the run directory (unless Options.KeepDir). It
// is safe to call more than once and after a failed New.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		l.mu.Lock()
		vms := append([]*VM(nil), l.vms...)
		l.mu.Unlock()
		for _, v := range vms {
			v.Kill()
		}
		if l.NFS != nil {
			l.NFS.Close()
		}
		l.mu.Lock()
		procs := append([]*Proc(nil), l.procs...)
		l.mu.Unlock()
		for _, p := range procs {
			p.Kill()
		}
		for _, p := range procs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := p.Wait(ctx); err != nil && ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("%s (pid %d) did not exit", p.Name, p.Pid()))
			}
			cancel()
		}
		if l.Net != nil {
			if err := l.Net.close(); err != nil {
				errs = append(errs, err)
			}
		}
		if l.state != nil {
			l.state.remove()
		}
		if l.Dir != "" && l.opts.Dir == "" && !l.opts.KeepDir {
			if err := os.RemoveAll(l.Dir); err != nil {
				errs = append(errs, err)
			}
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// Logf logs through the lab's Options.Logf.
func (l *Lab) Logf(format string, args ...any) { l.logf(format, args...) }

// LogDir is where the lab's processes write their logs.
func (l *Lab) LogDir() string { return filepath.Join(l.Dir, "logs") }

// GoBuild builds a main package of this module (a path like
// "./cmd/nfsdrop") as a static binary (CGO_ENABLED=0) at dst.
func (l *Lab) GoBuild(ctx context.Context, pkg, dst string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", dst, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// RepoRoot is the top directory of the nfsdrop source tree.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func newID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Proc is a process the lab started. It is killed with SIGKILL if the lab
// process dies (Pdeathsig) and runs in its own process group, so that a
// terminal's Ctrl-C reaches only the lab, which then stops it in order.
type Proc struct {
	Name string
	// Cmd is the command the lab started; nil for an adopted process.
	Cmd *exec.Cmd
	Log string

	process *os.Process
	done    <-chan struct{}
	exit    *testenv.Exit // nil for an adopted process
	started time.Time
	// target, when not 0, is the process that signals go to: the child
	// that nsenter or unshare --fork started (see followChild).
	target int
	// group: Kill also kills the process group the process leads (a
	// Postfix master and the daemons it started).
	group bool
}

// start runs argv with its output appended to logPath and records it for
// Close and for CleanStale.
func (l *Lab) start(name, logPath string, argv ...string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	exit, err := testenv.StartTied(cmd)
	if err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, process: cmd.Process, done: exit.Done(), exit: exit, started: time.Now()}
	l.track(p)
	return p, nil
}

// adopt records a process that a shared starter (internal/testenv) ran
// and waits for, so that Close and CleanStale end it like the lab's own;
// done is closed when it has ended.
func (l *Lab) adopt(name, logPath string, process *os.Process, done <-chan struct{}) *Proc {
	p := &Proc{Name: name, Log: logPath, process: process, done: done, started: time.Now()}
	l.track(p)
	return p
}

// track records p for Close and, by PID, for CleanStale.
func (l *Lab) track(p *Proc) {
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	if l.state != nil {
		l.state.addPID(p.Name, p.process.Pid)
	}
}

// Pid is the process id: the real program's, past a forking nsenter.
func (p *Proc) Pid() int {
	if p.target != 0 {
		return p.target
	}
	return p.process.Pid
}

// followChild waits until the process (nsenter or unshare --fork, which
// fork the real program and wait for it) has its one child and makes that
// child the target of signals. The lab's state file records it too.
func (l *Lab) followChild(p *Proc, timeout time.Duration) error {
	pid := p.process.Pid
	path := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if f := strings.Fields(string(b)); len(f) > 0 {
			c, err := strconv.Atoi(f[0])
			if err != nil {
				return err
			}
			p.target = c
			if l.state != nil {
				l.state.addPID(p.Name+"-child", c)
			}
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("lab: %s exited (see %s)", p.Name, p.Log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: %s started no child in %v", p.Name, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to end and returns its exit error.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		if p.exit == nil {
			return nil
		}
		return p.exit.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the process (not its group: the process itself
// decides what to do with its children).
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if p.target != 0 {
		return syscall.Kill(p.target, sig)
	}
	return p.process.Signal(sig)
}

// Kill sends SIGKILL (to the process group too when the process leads one
// that must not outlive it).
func (p *Proc) Kill() {
	if p.group && !p.Exited() {
		syscall.Kill(-p.process.Pid, syscall.SIGKILL)
	}
	p.Signal(syscall.SIGKILL)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL, and waits.
func (p *Proc) Stop(grace time.Duration) error {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil && ctx.Err() != nil {
		return fmt.Errorf("lab: %s (pid %d) survived SIGKILL", p.Name, p.Pid())
	}
	return nil
}
