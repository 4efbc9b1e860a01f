package haproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// config forwards frontend on fe to the server be, in TCP mode.
func config(fe, be string) string {
	return fmt.Sprintf(`global
	maxconn 100
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend fe
	bind %s
	default_backend be
backend be
	server s1 %s
`, fe, be)
}

// greeter accepts connections and writes "hello\n" on each.
func greeter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello\n")
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// TestHAProxyStartForwardsAndStops: Start returns once the frontend
// accepts, a connection reaches the backend through HAProxy, and Stop ends
// the process (its PID is gone: signal 0 fails).
func TestHAProxyStartForwardsAndStops(t *testing.T) {
	fe := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	in := StartT(t, Options{Config: config(fe, greeter(t)), Ready: []string{fe}})
	c, err := net.DialTimeout("tcp", fe, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	c.Close()
	if string(got) != "hello\n" {
		t.Fatalf("through HAProxy: %q, %v; log:\n%s", got, err, in.Log())
	}
	pid := in.PID()
	in.Stop()
	select {
	case <-in.Exited():
	default:
		t.Fatal("Stop returned before HAProxy exited")
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("after Stop, kill(%d, 0) = %v, want ESRCH", pid, err)
	}
	in.Stop() // a second Stop does nothing
}

// TestHAProxyBadConfigFailsCheck: a configuration haproxy -c refuses
// fails Start with HAProxy's own message, and no daemon is started.
func TestHAProxyBadConfigFailsCheck(t *testing.T) {
	testenv.Require(t, Package, "haproxy")
	fe := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	bad := strings.Replace(config(fe, "127.0.0.1:1"), "default_backend be", "default_backend nosuch", 1)
	in, err := Start(context.Background(), Options{Config: bad, Ready: []string{fe}})
	if err == nil {
		in.Close()
		t.Fatal("Start accepted a configuration naming a missing backend")
	}
	if !strings.Contains(err.Error(), "haproxy -c -f") || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("error does not name the check and the problem: %v", err)
	}
}

// TestHAProxyPrefixAndDir: Prefix is put before the haproxy command lines
// (here env, which execs it, as ip netns exec does), and a given Dir keeps
// the configuration and the log after Close.
func TestHAProxyPrefixAndDir(t *testing.T) {
	env := testenv.Require(t, "coreutils", "env")[0]
	dir := t.TempDir()
	fe := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	dialed := 0
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed++
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	in := StartT(t, Options{Config: config(fe, greeter(t)), Ready: []string{fe}, Dir: dir, Prefix: []string{env}, Dial: dial})
	if dialed == 0 {
		t.Error("Options.Dial was not used for the readiness wait")
	}
	comm, err := procComm(in.PID())
	if err != nil || comm != "haproxy" {
		t.Errorf("PID %d runs %q (%v), want haproxy itself (the prefix execs it)", in.PID(), comm, err)
	}
	in.Close()
	if in.Conf != filepath.Join(dir, "haproxy.cfg") || !fileExists(in.Conf) {
		t.Errorf("configuration %s: not kept in the caller's directory %s after Close", in.Conf, dir)
	}
}

func procComm(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b)), err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
