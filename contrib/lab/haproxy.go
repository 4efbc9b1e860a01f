package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/haproxy"
)

// HAProxy is a load balancer in the client namespace (ClientAddr) in mode
// tcp: POP3 on ClientAddr:110 to every VM's pop3d with a PROXY v2 header
// (so pop3.proxy_networks must name ClientAddr), LMTP on ClientAddr:24 to
// every VM's lmtpd. Servers are checked every second and taken out after
// two failed checks.
type HAProxy struct {
	Conf, Stats string
	POP3Addr    string
	LMTPAddr    string

	lab  *Lab
	in   *haproxy.Instance
	proc *Proc
}

// HAProxyOptions configures StartHAProxy.
type HAProxyOptions struct {
	// VMs are the backends (their addresses, ports 110 and 24).
	VMs []*VM
	// Balance is HAProxy's algorithm (default roundrobin).
	Balance string
}

func haproxyConfig(l *Lab, o HAProxyOptions, stats string) string {
	if o.Balance == "" {
		o.Balance = "roundrobin"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# HAProxy for nfsdrop lab %s (written by contrib/lab)
global
	maxconn 2000
	stats socket %s mode 600 level admin

defaults
	mode tcp
	timeout connect 3s
	# Longer than a filer restart under a hard mount: a session blocked
	# on NFS must not be cut by the balancer.
	timeout client 75s
	timeout server 75s
	retries 2
	option redispatch

frontend pop3
	bind %s:110
	default_backend pop3

frontend lmtp
	bind %s:24
	default_backend lmtp

backend pop3
	balance %s
`, l.ID, stats, ClientAddr, ClientAddr, o.Balance)
	for _, v := range o.VMs {
		fmt.Fprintf(&b, "\tserver %s %s:110 check inter 1s fall 2 rise 2 send-proxy-v2 check-send-proxy\n", v.Host, v.Addr)
	}
	fmt.Fprintf(&b, "\nbackend lmtp\n\tbalance %s\n", o.Balance)
	for _, v := range o.VMs {
		fmt.Fprintf(&b, "\tserver %s %s:24 check inter 1s fall 2 rise 2\n", v.Host, v.Addr)
	}
	return b.String()
}

// StartHAProxy writes the configuration, checks it (haproxy -c) and runs
// HAProxy in the foreground (-db) in the client namespace, through
// internal/testenv/haproxy with "ip netns exec" as the command prefix and
// the readiness probe dialled from inside the namespace. The lab adopts
// the process, so that Close and CleanStale end it like its own.
func (l *Lab) StartHAProxy(ctx context.Context, o HAProxyOptions) (*HAProxy, error) {
	dir := filepath.Join(l.Dir, "haproxy")
	h := &HAProxy{
		Conf: filepath.Join(dir, "haproxy.cfg"), Stats: filepath.Join(dir, "stats.sock"),
		POP3Addr: ClientAddr + ":110", LMTPAddr: ClientAddr + ":24", lab: l,
	}
	in, err := haproxy.Start(ctx, haproxy.Options{
		Config:  haproxyConfig(l, o, h.Stats),
		Ready:   []string{h.LMTPAddr},
		Dir:     dir,
		LogFile: filepath.Join(l.LogDir(), "haproxy.log"),
		Prefix:  []string{"ip", "netns", "exec", l.Net.Client},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.Net.Dial(ctx, l.Net.Client, network, addr)
		},
	})
	if errors.Is(err, testenv.ErrNotInstalled) {
		return nil, &MissingError{Packages: []string{haproxy.Package}}
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	h.in = in
	h.proc = l.adopt("haproxy", in.LogFile, in.Process(), in.Exited())
	l.logf("haproxy: pid %d, POP3 %s and LMTP %s over %d VMs", in.PID(), h.POP3Addr, h.LMTPAddr, len(o.VMs))
	return h, nil
}

// Stop stops HAProxy.
func (h *HAProxy) Stop() error {
	if h.in != nil {
		h.in.Stop()
	}
	return nil
}

// ServerStates asks the stats socket for each server's state: "UP",
// "DOWN", "MAINT", ... by "backend/server".
func (h *HAProxy) ServerStates() (map[string]string, error) {
	c, err := net.DialTimeout("unix", h.Stats, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return nil, err
	}
	states := map[string]string{}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 18 || strings.HasPrefix(f[0], "#") || f[1] == "FRONTEND" || f[1] == "BACKEND" {
			continue
		}
		states[f[0]+"/"+f[1]] = f[17]
	}
	return states, sc.Err()
}

// WaitUp waits until every server of both backends is UP.
func (h *HAProxy) WaitUp(ctx context.Context, timeout time.Duration) error {
	var last map[string]string
	err := waitFor(ctx, timeout, func() bool {
		st, err := h.ServerStates()
		if err != nil || len(st) == 0 {
			return false
		}
		last = st
		for _, s := range st {
			if !strings.HasPrefix(s, "UP") {
				return false
			}
		}
		return true
	}, h.proc.Exited)
	if err != nil {
		return fmt.Errorf("lab: haproxy servers not all UP: %v (%v)", err, last)
	}
	return nil
}
