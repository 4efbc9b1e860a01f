// Package daemon is what nfsdrop's servers share as processes: listeners
// (systemd socket activation by name, or bound from the configuration),
// sd_notify readiness, status and watchdog, and signal handling (SIGTERM
// drains, SIGHUP reloads).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Listeners returns the sockets named in names that systemd passed
// (LISTEN_FDS with LISTEN_FDNAMES, as set by FileDescriptorName= or
// systemd-socket-activate --fdname), keyed by name, and whether the process
// was socket-activated at all. Sockets with other names are closed: a
// service must not hold a socket it does not serve.
func Listeners(names ...string) (map[string][]net.Listener, bool, error) {
	if os.Getenv("LISTEN_FDS") == "" {
		return nil, false, nil
	}
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return nil, true, fmt.Errorf("socket activation: %w", err)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string][]net.Listener{}
	for name, ls := range byName {
		for _, l := range ls {
			if l == nil {
				continue
			}
			if want[name] {
				out[name] = append(out[name], l)
			} else {
				l.Close()
			}
		}
	}
	return out, true, nil
}

// Listen binds one configured address: "unix:/path" (a stale socket file
// is replaced; mode 0666, access is controlled by the directory) or
// "tcp:host:port" / "host:port".
func Listen(spec string) (net.Listener, error) {
	network, addr := "tcp", spec
	switch {
	case len(spec) > 5 && spec[:5] == "unix:":
		network, addr = "unix", spec[5:]
	case len(spec) > 4 && spec[:4] == "tcp:":
		addr = spec[4:]
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, fmt.Errorf("listen %s: %w", spec, err)
		}
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			// A socket left by a previous run that died: nobody can be
			// listening on it if connecting fails.
			if c, err := net.Dial("unix", addr); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen %s: another process is listening there", spec)
			}
			os.Remove(addr)
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", spec, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o666); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen %s: %w", spec, err)
		}
	}
	return l, nil
}

// Notifier tells systemd about the service's state. Without NOTIFY_SOCKET
// every call is a no-op.
type Notifier struct{ log *slog.Logger }

// NewNotifier makes a Notifier that logs failures to log.
func NewNotifier(log *slog.Logger) Notifier { return Notifier{log: log} }

func (n Notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// Ready sends READY=1 and a STATUS line.
func (n Notifier) Ready(status string) { n.send(sd.SdNotifyReady + "\nSTATUS=" + status) }

// Status sends a STATUS line.
func (n Notifier) Status(status string) { n.send("STATUS=" + status) }

// Stopping sends STOPPING=1.
func (n Notifier) Stopping() { n.send(sd.SdNotifyStopping + "\nSTATUS=stopping") }

// Reloading sends RELOADING=1 with a monotonic timestamp, then, via the
// returned function, READY=1 again.
func (n Notifier) Reloading() func() {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	n.send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
	return func() { n.send(sd.SdNotifyReady) }
}

// Watchdog sends WATCHDOG=1 at half the interval systemd asked for
// (WatchdogSec=), while healthy() is true, until ctx ends.
func (n Notifier) Watchdog(ctx context.Context, healthy func() error) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := healthy(); err != nil {
				n.log.Error("health check failed; withholding watchdog ping", "err", err)
				continue
			}
			n.send(sd.SdNotifyWatchdog)
		}
	}
}

// Signals runs until ctx ends or SIGTERM/SIGINT arrives, calling reload on
// each SIGHUP. It returns the signal that ended it (nil when ctx ended).
func Signals(ctx context.Context, log *slog.Logger, reload func() error) os.Signal {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-ch:
			if sig != syscall.SIGHUP {
				log.Info("stopping", "signal", sig.String())
				return sig
			}
			log.Info("reloading", "signal", sig.String())
			if err := reload(); err != nil {
				log.Error("reload failed; keeping the running configuration", "err", err)
			} else {
				log.Info("reloaded")
			}
		}
	}
}

// IsClosed reports whether err is the error a server returns after its
// listener was closed on purpose.
func IsClosed(err error) bool {
	return err == nil || errors.Is(err, net.ErrClosed)
}
