package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Addresses on the lab's bridge. Only these and the VMs' VMAddr are ever
// used: traffic never leaves the lab's namespaces.
const (
	Subnet     = "127.77.0.0/24"
	ServerAddr = "127.77.0.9" // nfs-ganesha
	ClientAddr = "127.77.0.5" // load generators, test clients
)

// VMAddr is the address of VM n (1-based): 127.77.0.11 for mx1.
func VMAddr(n int) string { return fmt.Sprintf("127.77.0.%d", 10+n) }

// Net is the lab's network: a switch namespace holding bridge br0 (and a
// tap device per VM, the VMs' qemu processes run there), and one namespace
// each for the NFS server and the client, joined to br0 by veth pairs.
// Every name carries the lab's ID, so that labs never clash.
type Net struct {
	// Switch, Server and Client are the namespace names (ip netns).
	Switch, Server, Client string

	lab  *Lab
	mu   sync.Mutex
	made []string
	taps map[string]bool
}

func newNet(ctx context.Context, l *Lab) (*Net, error) {
	p := "ndl-" + l.ID
	n := &Net{Switch: p + "-sw", Server: p + "-nfs", Client: p + "-cl", lab: l, taps: map[string]bool{}}
	if err := n.addNS(ctx, n.Switch); err != nil {
		return n, err
	}
	if err := n.ip(ctx, n.Switch, "link", "set", "lo", "up"); err != nil {
		return n, err
	}
	if err := n.ip(ctx, n.Switch, "link", "add", "br0", "type", "bridge"); err != nil {
		return n, err
	}
	if err := n.ip(ctx, n.Switch, "link", "set", "br0", "up"); err != nil {
		return n, err
	}
	if err := n.addNode(ctx, n.Server, "nfs0", ServerAddr); err != nil {
		return n, err
	}
	if err := n.addNode(ctx, n.Client, "cl0", ClientAddr); err != nil {
		return n, err
	}
	return n, nil
}

func (n *Net) addNS(ctx context.Context, ns string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip netns add %s: %v: %s", ns, err, out)
	}
	n.mu.Lock()
	n.made = append(n.made, ns)
	n.mu.Unlock()
	n.lab.state.addNS(ns)
	return nil
}

// addNode makes namespace ns with eth0 at addr/24 on the bridge (the
// switch side of the veth pair is named port), lo narrowed to
// 127.0.0.1/32 and route_localnet on, as 127.77.x addresses need.
func (n *Net) addNode(ctx context.Context, ns, port, addr string) error {
	if err := n.addNS(ctx, ns); err != nil {
		return err
	}
	steps := [][]string{
		{n.Switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{n.Switch, "link", "set", port, "master", "br0", "up"},
		{ns, "link", "set", "lo", "up"},
		{ns, "addr", "del", "127.0.0.1/8", "dev", "lo"},
		{ns, "addr", "add", "127.0.0.1/32", "dev", "lo"},
	}
	for _, s := range steps {
		if err := n.ip(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if out, err := n.Command(ctx, ns, "sysctl", "-q", "-w",
		"net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1").CombinedOutput(); err != nil {
		return fmt.Errorf("lab: sysctl in %s: %v: %s", ns, err, out)
	}
	if err := n.ip(ctx, ns, "addr", "add", addr+"/24", "dev", "eth0"); err != nil {
		return err
	}
	return n.ip(ctx, ns, "link", "set", "eth0", "up")
}

// ip runs "ip -n ns args...".
func (n *Net) ip(ctx context.Context, ns string, args ...string) error {
	argv := append([]string{"-n", ns}, args...)
	if out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip %s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Command prepares argv to run inside namespace ns (ip netns exec, which
// execs argv: the process's PID is argv's).
func (n *Net) Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// AddTap makes tap device name in the switch namespace, on the bridge and
// up. It is kept until the lab is closed, so a VM can be restarted on it.
func (n *Net) AddTap(ctx context.Context, name string) error {
	n.mu.Lock()
	have := n.taps[name]
	n.mu.Unlock()
	if have {
		return nil
	}
	if err := n.ip(ctx, n.Switch, "tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return err
	}
	if err := n.ip(ctx, n.Switch, "link", "set", name, "master", "br0", "up"); err != nil {
		return err
	}
	n.mu.Lock()
	n.taps[name] = true
	n.mu.Unlock()
	return nil
}

// SetLink sets a device of the switch namespace (a VM's tap) up or down:
// down cuts the VM off the network.
func (n *Net) SetLink(ctx context.Context, dev string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return n.ip(ctx, n.Switch, "link", "set", dev, state)
}

// Dial connects from inside namespace ns (Client for tests) to addr: the
// socket is made on an OS thread switched into ns, then the thread is
// switched back.
func (n *Net) Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.inNS(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens inside namespace ns.
func (n *Net) Listen(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.inNS(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// inNS runs f on an OS thread that is in network namespace ns. Sockets
// made by f stay in ns.
func (n *Net) inNS(ns string, f func() error) error {
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine:
			// no other goroutine ever runs in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("lab: setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// close deletes the namespaces this lab made (which removes the bridge,
// the taps and the veth pairs in them), by name, in reverse order.
func (n *Net) close() error {
	n.mu.Lock()
	made := append([]string(nil), n.made...)
	n.made = nil
	n.mu.Unlock()
	var errs []error
	for i := len(made) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", made[i]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("lab: ip netns del %s: %v: %s", made[i], err, out))
		}
	}
	return errors.Join(errs...)
}
