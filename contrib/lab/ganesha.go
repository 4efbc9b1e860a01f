package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// NFSServer is nfs-ganesha (with the rpcbind it needs) in the lab's server
// namespace, at ServerAddr, exporting the lab's Export directory over
// NFSv3 and NFSv4.x (4.0, 4.1, 4.2), TCP only. Both run in a private mount namespace with their own /run, so
// that rpcbind's lock and socket never meet those of another lab or of the
// host.
type NFSServer struct {
	// Export is the exported host directory; VMs mount Addr:Export.
	Export string
	Addr   string
	Conf   string
	Log    string

	lab     *Lab
	dir     string
	mu      sync.Mutex
	holder  *Proc // keeps the mount namespace with the private /run
	rpcbind *Proc
	ganesha *Proc
	starts  int
}

func newNFSServer(l *Lab) *NFSServer {
	dir := filepath.Join(l.Dir, "ganesha")
	return &NFSServer{
		Export: l.Export,
		Addr:   ServerAddr,
		Conf:   filepath.Join(dir, "ganesha.conf"),
		Log:    filepath.Join(l.LogDir(), "ganesha.log"),
		lab:    l,
		dir:    dir,
	}
}

// Source is the NFS source a VM mounts: the export's Path. The export's
// Pseudo path (what an NFSv4 client mounts) is set to the same string, so
// one source works for every version (an NFSv3 client that asks for a
// pseudo path that differs from Path is refused).
func (s *NFSServer) Source() string { return s.Addr + ":" + s.Export }

func (s *NFSServer) config() string {
	return fmt.Sprintf(`# nfs-ganesha for nfsdrop lab %s
NFS_CORE_PARAM {
	Protocols = 3, 4;
	NFS_Port = 2049;
	Bind_addr = %s;
	Enable_NLM = false;
	Enable_RQUOTA = false;
}
NFS_KRB5 {
	Active_krb5 = false;
}
NFSV4 {
	# Owners and groups as bare numbers, as Linux's knfsd sends them for
	# sec=sys: names ("root@localdomain") that a client without an
	# idmapper cannot map leave every file owned by nobody on the
	# client, and its owner attributes never valid, so that every stat
	# costs a GETATTR (docs/nfs.md).
	Only_Numeric_Owners = true;
	Graceless = true;
	RecoveryBackend = fs;
	RecoveryRoot = %s;
}
EXPORT {
	Export_Id = 1;
	Path = %s;
	Pseudo = %s;
	Protocols = 3, 4;
	Transports = TCP;
	SecType = sys;
	Access_Type = RW;
	Squash = No_Root_Squash;
	FSAL {
		Name = VFS;
	}
}
`, s.lab.ID, s.Addr, filepath.Join(s.dir, "recovery"), s.Export, s.Export)
}

// Start starts rpcbind (when not running) and ganesha, and waits until
// mountd answers over TCP. It may be called again after Stop or Kill: a
// restarted filer.
func (s *NFSServer) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ganesha != nil && !s.ganesha.Exited() {
		return fmt.Errorf("lab: ganesha already running (pid %d)", s.ganesha.Pid())
	}
	l := s.lab
	if err := os.MkdirAll(filepath.Join(s.dir, "recovery"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(s.Conf, []byte(s.config()), 0o644); err != nil {
		return err
	}
	if s.holder == nil || s.holder.Exited() {
		// ip netns exec makes a mount namespace; unshare makes a private
		// one inside it, where /run is a fresh tmpfs, and a PID namespace
		// whose init is the holder: when the holder dies (the lab closes,
		// or the lab process dies and Pdeathsig/--kill-child fire), the
		// kernel kills everything in it, rpcbind included, which drops
		// its privileges and with them its own parent-death signal.
		p, err := l.start("nfs-ns", filepath.Join(l.LogDir(), "nfs-ns.log"),
			"ip", "netns", "exec", l.Net.Server,
			"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc", "--",
			"sh", "-c", "mount -t tmpfs nfsdrop-lab /run && mkdir -p /run/rpcbind && echo ready && exec sleep 2147483647")
		if err != nil {
			return err
		}
		s.holder = p
		if err := l.followChild(p, 10*time.Second); err != nil {
			return err
		}
		if err := waitFor(ctx, 10*time.Second, func() bool {
			b, _ := os.ReadFile(p.Log)
			return strings.Contains(string(b), "ready")
		}, func() bool { return p.Exited() }); err != nil {
			return fmt.Errorf("lab: namespace holder for the NFS server: %v (see %s)", err, p.Log)
		}
	}
	// nsenter forks the program into the PID namespace and waits for it;
	// signals go to the program itself (followChild).
	enter := []string{"nsenter", fmt.Sprintf("--target=%d", s.holder.Pid()), "--mount", "--net", "--pid", "--"}
	if s.rpcbind == nil || s.rpcbind.Exited() {
		// rpcbind leaves its lock and socket behind after SIGTERM.
		p, err := l.start("rpcbind", filepath.Join(l.LogDir(), "rpcbind.log"), append(enter,
			"sh", "-c", "rm -f /run/rpcbind.lock /run/rpcbind.sock /run/rpcbind/rpcbind.lock; exec rpcbind -f -w")...)
		if err != nil {
			return err
		}
		s.rpcbind = p
		if err := l.followChild(p, 10*time.Second); err != nil {
			return err
		}
		if err := waitFor(ctx, 10*time.Second, func() bool {
			return s.rpcinfo(ctx, "-p", s.Addr) == nil
		}, func() bool { return p.Exited() }); err != nil {
			return fmt.Errorf("lab: rpcbind: %v (see %s)", err, p.Log)
		}
	}
	s.starts++
	pidfile := filepath.Join(s.dir, "ganesha.pid")
	p, err := l.start("ganesha", filepath.Join(l.LogDir(), "ganesha.out"), append(enter,
		"ganesha.nfsd", "-F", "-f", s.Conf, "-L", s.Log, "-p", pidfile, "-N", "NIV_EVENT")...)
	if err != nil {
		return err
	}
	s.ganesha = p
	if err := l.followChild(p, 10*time.Second); err != nil {
		return err
	}
	t0 := time.Now()
	if err := waitFor(ctx, 60*time.Second, func() bool {
		return s.rpcinfo(ctx, "-T", "tcp", s.Addr, "mountd", "3") == nil
	}, func() bool { return p.Exited() }); err != nil {
		return fmt.Errorf("lab: ganesha not ready: %v (see %s and %s)", err, s.Log, p.Log)
	}
	l.logf("nfs: ganesha pid %d serving %s, ready in %v", p.Pid(), s.Source(), time.Since(t0).Round(time.Millisecond))
	return nil
}

// rpcinfo runs rpcinfo in the server namespace.
func (s *NFSServer) rpcinfo(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return s.lab.Net.Command(ctx, s.lab.Net.Server, append([]string{"rpcinfo"}, args...)...).Run()
}

// Running reports whether ganesha is running.
func (s *NFSServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ganesha != nil && !s.ganesha.Exited()
}

// Pid is ganesha's process id (0 when not started).
func (s *NFSServer) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ganesha == nil {
		return 0
	}
	return s.ganesha.Pid()
}

// Stop stops ganesha with SIGTERM (SIGKILL after 15 s); rpcbind stays.
func (s *NFSServer) Stop() error {
	s.mu.Lock()
	g := s.ganesha
	s.mu.Unlock()
	if g == nil {
		return nil
	}
	return g.Stop(15 * time.Second)
}

// Kill kills ganesha with SIGKILL: a filer that crashes.
func (s *NFSServer) Kill() {
	s.mu.Lock()
	g := s.ganesha
	s.mu.Unlock()
	if g != nil {
		g.Kill()
		g.Wait(context.Background())
	}
}

// Restart stops ganesha (SIGKILL when kill is true, else SIGTERM) and
// starts it again.
func (s *NFSServer) Restart(ctx context.Context, kill bool) error {
	if kill {
		s.Kill()
	} else if err := s.Stop(); err != nil {
		return err
	}
	return s.Start(ctx)
}

// Close stops ganesha, rpcbind and the namespace holder.
func (s *NFSServer) Close() {
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rpcbind != nil {
		s.rpcbind.Stop(5 * time.Second)
	}
	if s.holder != nil {
		// The holder is the PID namespace's init, deaf to SIGTERM; SIGKILL
		// ends it and whatever is still in its namespace.
		s.holder.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.holder.Wait(ctx)
		cancel()
	}
}

// waitFor polls ok every 100 ms until it is true, dead is true (the
// process died), timeout passes or ctx ends.
func waitFor(ctx context.Context, timeout time.Duration, ok, dead func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok() {
			return nil
		}
		if dead != nil && dead() {
			return fmt.Errorf("process exited")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
