package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// VMConfig describes one VM.
type VMConfig struct {
	// N numbers the VM from 1: host name mx<N>.test, address VMAddr(N),
	// tap device tap<N>.
	N int
	// Host overrides the host name.
	Host string
	// Script is the shell script the VM runs once the export is mounted:
	// a path under the export (as seen at MountPoint inside the VM) or an
	// absolute path in the VM. "" runs nothing: the VM only answers on its
	// control port until it is told to power off.
	Script string
	// MountOpts are the NFS mount options (nfs(5)), default
	// DefaultMountOpts. addr= and mountproto= are added.
	MountOpts string
	// MemMB is the memory size (default 512).
	MemMB int
	// Stay keeps the VM running after the script ends, until Poweroff.
	Stay bool
	// Grace is how long the script gets between SIGTERM and SIGKILL when
	// the VM is told to power off (default 10 s).
	Grace time.Duration
	// CtlPort is the control port (default 7777).
	CtlPort int
	// Append is added to the kernel command line.
	Append string
	// QemuArgs are added to qemu's arguments.
	QemuArgs []string
	// Initramfs replaces the lab's initramfs (a systemd VM's boot one).
	Initramfs string
	// Disk is a raw disk image attached as /dev/vda (virtio).
	Disk string
	// Addr overrides the address (default VMAddr(N)); Tap overrides the
	// tap device's name (default tap<N>). The kernel NFS server's VM
	// uses them: it is not one of the numbered front ends.
	Addr, Tap string
	// Mounts are mounted by the VM's init after the lab's export (at
	// MountPoint) and before the script runs, in order.
	Mounts []Mount
}

// Mount is one more mount of a front-end VM: an NFS export (Source is
// SERVER:PATH, Opts nfs(5) options as for MountOpts, mounted with
// labmount), or, when Opts is "bind", a directory of the VM (Source, a
// path such as MountPoint+"/mailg") bound at Point. A filer mounted below
// a local directory is how a front end mounts several volumes under one
// mail_root.
type Mount struct {
	Source, Point, Opts string
}

// word is the mount on the kernel command line: lab.mount=SOURCE;POINT;OPTS
// (guest/init splits it at the semicolons).
func (m Mount) word() string { return "lab.mount=" + m.Source + ";" + m.Point + ";" + m.Opts }

// DefaultMountOpts mounts NFSv3 over TCP without NLM locks.
const DefaultMountOpts = "vers=3,nolock,proto=tcp"

// NFSVersions are the versions MountOptsFor knows.
var NFSVersions = []string{"3", "4.1", "4.2"}

// MountOptsFor returns the lab's mount options for NFS version vers ("3",
// "4.1" or "4.2"): DefaultMountOpts for 3; for 4.x the same without
// nolock (NFSv4 has its locks in the protocol, and nfsdrop takes none).
// extra (may be "") is appended: "hard,actimeo=3,lookupcache=positive,noatime"
// is what docs/nfs.md recommends to sites (SiteMountOpts).
func MountOptsFor(vers, extra string) (string, error) {
	var o string
	switch vers {
	case "3":
		o = DefaultMountOpts
	case "4.1", "4.2":
		o = "vers=" + vers + ",proto=tcp"
	default:
		return "", fmt.Errorf("lab: NFS version %q: one of %s", vers, strings.Join(NFSVersions, ", "))
	}
	if extra != "" {
		o += "," + extra
	}
	return o, nil
}

// SiteMountOpts are the options docs/nfs.md recommends beyond the version
// (hard is the default; said anyway, as a site's fstab says it).
const SiteMountOpts = "hard,actimeo=3,lookupcache=positive,noatime"

// NFSVersionOf returns the vers= value of mount options ("3" when none
// is given: the lab's default).
func NFSVersionOf(opts string) string {
	for _, o := range strings.Split(opts, ",") {
		if k, v, ok := strings.Cut(o, "="); ok && (k == "vers" || k == "nfsvers") {
			return v
		}
	}
	return "3"
}

// VM is one qemu virtual machine (software emulation, one CPU) running in
// the switch namespace on its own tap device. Its console goes to Log.
type VM struct {
	Config VMConfig
	Host   string
	Addr   string
	Tap    string
	// Log is the console output (every boot appended).
	Log string

	lab       *Lab
	mu        sync.Mutex
	proc      *Proc
	started   time.Time
	logOffset int64
	boots     int
}

// NewVM describes a VM of the lab; Start boots it.
func (l *Lab) NewVM(cfg VMConfig) *VM {
	if cfg.Host == "" {
		cfg.Host = fmt.Sprintf("mx%d.test", cfg.N)
	}
	if cfg.MountOpts == "" {
		cfg.MountOpts = DefaultMountOpts
	}
	if cfg.MemMB == 0 {
		cfg.MemMB = 512
	}
	if cfg.Grace == 0 {
		cfg.Grace = 10 * time.Second
	}
	if cfg.CtlPort == 0 {
		cfg.CtlPort = 7777
	}
	if cfg.Addr == "" {
		cfg.Addr = VMAddr(cfg.N)
	}
	if cfg.Tap == "" {
		cfg.Tap = fmt.Sprintf("tap%d", cfg.N)
	}
	v := &VM{
		Config: cfg,
		Host:   cfg.Host,
		Addr:   cfg.Addr,
		Tap:    cfg.Tap,
		Log:    filepath.Join(l.LogDir(), cfg.Host+".console.log"),
		lab:    l,
	}
	l.mu.Lock()
	l.vms = append(l.vms, v)
	l.mu.Unlock()
	return v
}

// StartVMs describes and boots VMs 1..n, with cfg(i) giving each one's
// configuration (N is set by StartVMs).
func (l *Lab) StartVMs(ctx context.Context, n int, cfg func(i int) VMConfig) ([]*VM, error) {
	var vms []*VM
	for i := 1; i <= n; i++ {
		c := VMConfig{}
		if cfg != nil {
			c = cfg(i)
		}
		c.N = i
		v := l.NewVM(c)
		if err := v.Start(ctx); err != nil {
			return vms, err
		}
		vms = append(vms, v)
	}
	return vms, nil
}

func (v *VM) cmdline() string {
	c := v.Config
	parts := []string{
		// no_timer_check: under software emulation on a loaded host
		// the kernel's IO-APIC timer check can fail and panic the boot
		// ("IO-APIC + timer doesn't work!"); the timer is fine.
		"console=ttyS0", "quiet", "loglevel=3", "panic=-1", "no_timer_check",
		"lab.host=" + v.Host,
		"lab.ip=" + v.Addr,
		"lab.nfs=" + v.lab.NFS.Source(),
		"lab.opts=" + c.MountOpts,
		"lab.mnt=" + MountPoint,
		"lab.ctl=" + strconv.Itoa(c.CtlPort),
		"lab.grace=" + strconv.Itoa(int((c.Grace+time.Second-1)/time.Second)),
	}
	if c.Script != "" {
		parts = append(parts, "lab.run="+c.Script)
	}
	if c.Stay {
		parts = append(parts, "lab.stay=1")
	}
	for _, m := range c.Mounts {
		parts = append(parts, m.word())
	}
	if c.Append != "" {
		parts = append(parts, c.Append)
	}
	return strings.Join(parts, " ")
}

// Start boots the VM (again, after it stopped).
func (v *VM) Start(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil && !v.proc.Exited() {
		return fmt.Errorf("lab: %s already running", v.Host)
	}
	words := []string{v.Host, v.Config.MountOpts, v.Config.Script}
	for _, m := range v.Config.Mounts {
		if m.Source == "" || !strings.HasPrefix(m.Point, "/") || strings.Contains(m.Source+m.Point+m.Opts, ";") {
			return fmt.Errorf("lab: %s: mount %+v: a source, an absolute mount point, no semicolons", v.Host, m)
		}
		words = append(words, m.word())
	}
	for _, s := range words {
		if strings.ContainsAny(s, " \t\n\"") {
			return fmt.Errorf("lab: %s: %q: no spaces or quotes on the kernel command line", v.Host, s)
		}
	}
	// Append may hold several parameters, separated by spaces.
	if strings.ContainsAny(v.Config.Append, "\t\n\"") {
		return fmt.Errorf("lab: %s: %q: no quotes on the kernel command line", v.Host, v.Config.Append)
	}
	l := v.lab
	if err := l.Net.AddTap(ctx, v.Tap); err != nil {
		return err
	}
	if fi, err := os.Stat(v.Log); err == nil {
		v.logOffset = fi.Size()
	}
	a := l.Assets
	initrd := l.Initramfs
	if v.Config.Initramfs != "" {
		initrd = v.Config.Initramfs
	}
	argv := []string{
		"ip", "netns", "exec", l.Net.Switch,
		"qemu-system-x86_64",
		"-name", v.Host,
		// TCG: a KVM guest hangs on these hosts (see TESTING.md).
		"-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1",
		"-m", strconv.Itoa(v.Config.MemMB),
		"-nographic", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", initrd,
		"-netdev", "tap,id=n0,ifname=" + v.Tap + ",script=no,downscript=no",
		"-device", fmt.Sprintf("virtio-net-pci,netdev=n0,mac=52:54:00:77:00:%02x,romfile=", lastOctet(v.Addr)),
		"-device", "virtio-rng-pci",
		"-append", v.cmdline(),
	}
	if v.Config.Disk != "" {
		// cache=unsafe: the image is thrown away after the run, and
		// what the guest wrote is in the file once qemu exits.
		argv = append(argv, "-drive", "file="+v.Config.Disk+",if=virtio,format=raw,cache=unsafe")
	}
	argv = append(argv, v.Config.QemuArgs...)
	p, err := l.start("qemu-"+v.Host, v.Log, argv...)
	if err != nil {
		return err
	}
	v.proc = p
	v.started = time.Now()
	v.boots++
	l.logf("vm %s: qemu pid %d, %s on %s", v.Host, p.Pid(), v.Addr, v.Tap)
	return nil
}

// lastOctet is the last number of an IPv4 address (the VM's MAC ends
// with it: 10+N for VM N, as before addresses could be chosen).
func lastOctet(addr string) int {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return 0
	}
	return int(ip[3])
}

var readyRE = regexp.MustCompile(`nfsdrop-lab: ready `)

// WaitReady waits until the VM has mounted the export (its init prints
// "nfsdrop-lab: ready") and returns the time since Start: the boot time.
func (v *VM) WaitReady(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	v.mu.Lock()
	p, off, t0 := v.proc, v.logOffset, v.started
	v.mu.Unlock()
	if p == nil {
		return 0, fmt.Errorf("lab: %s not started", v.Host)
	}
	var took time.Duration
	err := waitFor(ctx, timeout, func() bool {
		if readyRE.Match(v.consoleFrom(off)) {
			took = time.Since(t0)
			return true
		}
		return false
	}, p.Exited)
	if err != nil {
		return 0, fmt.Errorf("lab: %s not ready: %v; console:\n%s", v.Host, err, tail(v.consoleFrom(off), 3000))
	}
	return took, nil
}

func (v *VM) consoleFrom(off int64) []byte {
	f, err := os.Open(v.Log)
	if err != nil {
		return nil
	}
	defer f.Close()
	f.Seek(off, io.SeekStart)
	b, _ := io.ReadAll(f)
	return b
}

// Console returns the console output of the current boot.
func (v *VM) Console() string {
	v.mu.Lock()
	off := v.logOffset
	v.mu.Unlock()
	return string(v.consoleFrom(off))
}

// Running reports whether qemu runs.
func (v *VM) Running() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.proc != nil && !v.proc.Exited()
}

// Boots counts how many times the VM was started.
func (v *VM) Boots() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.boots
}

// Pid is qemu's process id.
func (v *VM) Pid() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return 0
	}
	return v.proc.Pid()
}

// Wait waits until qemu exits (the VM powered off or was killed).
func (v *VM) Wait(ctx context.Context) error {
	v.mu.Lock()
	p := v.proc
	v.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Wait(ctx)
}

// Kill kills qemu with SIGKILL: the machine dies at once, its NFS client
// state and unwritten data with it.
func (v *VM) Kill() {
	v.mu.Lock()
	p := v.proc
	v.mu.Unlock()
	if p != nil {
		p.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p.Wait(ctx)
		cancel()
	}
}

// Poweroff tells the VM over the network to stop its script (SIGTERM,
// then SIGKILL after Grace), sync, unmount and power off, and waits for
// qemu to exit; after Grace plus 30 s it is killed.
func (v *VM) Poweroff(ctx context.Context) error {
	if !v.Running() {
		return nil
	}
	if _, err := v.Ctl(ctx, "poweroff"); err != nil && v.Running() {
		v.lab.logf("vm %s: poweroff over the network failed (%v); killing it", v.Host, err)
		v.Kill()
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, v.Config.Grace+30*time.Second)
	defer cancel()
	if err := v.Wait(wctx); err != nil && wctx.Err() != nil {
		v.Kill()
		return fmt.Errorf("lab: %s did not power off; killed", v.Host)
	}
	return nil
}

// Ctl sends one command line to the VM's control port (see
// guest/lab-ctl) from the client namespace and returns the answer.
func (v *VM) Ctl(ctx context.Context, line string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	addr := net.JoinHostPort(v.Addr, strconv.Itoa(v.Config.CtlPort))
	c, err := v.lab.Net.Dial(ctx, v.lab.Net.Client, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("lab: %s control: %w", v.Host, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), fmt.Errorf("lab: %s control %q: %w", v.Host, firstWord(line), err)
	}
	if s := string(b); strings.HasPrefix(s, "err ") {
		return s, fmt.Errorf("lab: %s control %q: %s", v.Host, firstWord(line), strings.TrimSpace(s[4:]))
	}
	return string(b), nil
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}

// Ping asks the VM for its host name and uptime.
func (v *VM) Ping(ctx context.Context) error {
	s, err := v.Ctl(ctx, "ping")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(s, "ok "+v.Host+" ") {
		return fmt.Errorf("lab: %s ping: %q", v.Host, s)
	}
	return nil
}

// Exec runs a shell command in the VM and returns its output and exit
// status.
func (v *VM) Exec(ctx context.Context, command string) (string, int, error) {
	if strings.Contains(command, "\n") {
		return "", -1, fmt.Errorf("lab: Exec: one line only")
	}
	out, err := v.Ctl(ctx, "exec "+command)
	if err != nil {
		return out, -1, err
	}
	i := strings.LastIndex(out, "exit=")
	if i < 0 {
		return out, -1, fmt.Errorf("lab: %s exec: no exit status in %q", v.Host, out)
	}
	code, _ := strconv.Atoi(strings.TrimSpace(out[i+5:]))
	return out[:i], code, nil
}

// ClockSkew is the VM's clock minus the host's (from the middle of the
// round trip of an Exec of date).
func (v *VM) ClockSkew(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	out, code, err := v.Exec(ctx, "date +%s.%N")
	t1 := time.Now()
	if err != nil || code != 0 {
		return 0, fmt.Errorf("lab: %s date: %q %v", v.Host, out, err)
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		return 0, fmt.Errorf("lab: %s date: %q", v.Host, out)
	}
	mid := t0.Add(t1.Sub(t0) / 2)
	return time.Duration((f - float64(mid.UnixNano())/1e9) * float64(time.Second)), nil
}

// Mountstats reads the VM's NFS client counters for the lab's mount.
func (v *VM) Mountstats(ctx context.Context) (*MountStats, error) {
	return v.MountstatsAt(ctx, MountPoint)
}

// MountstatsAt reads the VM's NFS client counters for the mount at point
// (one of Config.Mounts).
func (v *VM) MountstatsAt(ctx context.Context, point string) (*MountStats, error) {
	out, err := v.Ctl(ctx, "mountstats")
	if err != nil {
		return nil, err
	}
	return ParseMountStats(out, point)
}

// LinkDown cuts the VM off the network (its tap goes down); LinkUp
// reconnects it.
func (v *VM) LinkDown(ctx context.Context) error { return v.lab.Net.SetLink(ctx, v.Tap, false) }

// LinkUp reconnects the VM.
func (v *VM) LinkUp(ctx context.Context) error { return v.lab.Net.SetLink(ctx, v.Tap, true) }

// Netem adds loss and delay to what the VM sends (tc netem on the guest's
// eth0: the host kernel may lack sch_netem, the guest's has it), for
// example Netem(ctx, 10, 50*time.Millisecond). Zero for both removes it.
func (v *VM) Netem(ctx context.Context, lossPercent float64, delay time.Duration) error {
	if lossPercent == 0 && delay == 0 {
		_, err := v.Ctl(ctx, "netem off")
		return err
	}
	args := fmt.Sprintf("netem delay %dms loss %g%%", delay.Milliseconds(), lossPercent)
	_, err := v.Ctl(ctx, args)
	return err
}

// NetemTo delays what the VM sends to addr alone (one address, such as
// ServerAddr: the filer) by delay, leaving its other traffic (LMTP and
// POP3 replies to the client namespace) alone: a prio qdisc on the
// guest's eth0 whose third band, chosen by a u32 filter on the
// destination, is a netem. The host kernel here has no sch_netem nor
// sch_prio, so both sides' delay is put on the guest's side: delay 2 ms on
// the way to the filer adds the same 2 ms to every round trip as 1 ms on
// each side of the filer's link would. NetemTo(ctx, addr, 0) or
// Netem(ctx, 0, 0) removes it.
func (v *VM) NetemTo(ctx context.Context, addr string, delay time.Duration) error {
	if delay == 0 {
		_, err := v.Ctl(ctx, "netem off")
		return err
	}
	if net.ParseIP(addr) == nil {
		return fmt.Errorf("lab: NetemTo: %q is not an IP address", addr)
	}
	_, err := v.Ctl(ctx, fmt.Sprintf("netemto %s delay %dus", addr, delay.Microseconds()))
	return err
}
