package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/backend"
	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/daemon"
	"github.com/nfsdrop/nfsdrop/internal/fsgate"
	"github.com/nfsdrop/nfsdrop/internal/metrics"
	"github.com/nfsdrop/nfsdrop/lmtp"
)

// daemonRun is one server process: the LMTP and/or POP3 servers it runs,
// their listeners, and what a reload swaps.
type daemonRun struct {
	env     *env
	cfgPath string
	logw    io.Writer

	listeners []boundListener
	shutdowns []func(context.Context) error
	reloaders []func(old, new *env) error
	statuses  []func() string
	ready     func(d *daemonRun)

	// metricsListener serves /metrics when metrics.listen is set.
	metricsListener net.Listener

	current atomic.Pointer[env]

	// backend serves every protocol of the process; one reload swaps it.
	backend *backend.Backend
}

type boundListener struct {
	l     net.Listener
	proto string // "lmtp", "pop3", "pop3s"
	serve func(net.Listener) error
}

func (d *daemonRun) addr(proto string) []string {
	var out []string
	for _, b := range d.listeners {
		if b.proto == proto {
			out = append(out, b.l.Addr().String())
		}
	}
	return out
}

// addLMTP binds (or takes from systemd) the LMTP listeners and adds the
// LMTP server.
func (d *daemonRun) addLMTP() error {
	ls, err := lmtpListeners(d.env.cfg)
	if err != nil {
		return err
	}
	opts := lmtpOptions(d.env.cfg, d.env.hostname, d.env.log)
	if d.env.metrics != nil {
		opts.Observer = d.env.metrics
	}
	srv := lmtp.New(d.sharedBackend(), opts)
	for _, l := range ls {
		d.listeners = append(d.listeners, boundListener{l: l, proto: "lmtp", serve: srv.Serve})
	}
	d.shutdowns = append(d.shutdowns, srv.Shutdown)
	d.statuses = append(d.statuses, func() string { return fmt.Sprintf("LMTP %d connections", srv.Connections()) })
	return nil
}

// sharedBackend is the backend of every server of the process (LMTP
// and POP3 share it); a reload swaps it once, after every reloader
// succeeded.
func (d *daemonRun) sharedBackend() *backend.Backend {
	if d.backend == nil {
		d.backend = d.env.backend()
	}
	return d.backend
}

// run serves until SIGTERM/SIGINT (or ctx ends), reloading on SIGHUP, and
// drains on the way out.
func (d *daemonRun) run(ctx context.Context) error {
	e := d.env
	log := e.log
	e.startSweeper()
	d.current.Store(e)
	notify := daemon.NewNotifier(log)
	var wg sync.WaitGroup
	serveErr := make(chan error, len(d.listeners))
	var addrs []string
	for _, b := range d.listeners {
		addrs = append(addrs, b.proto+"="+b.l.Addr().Network()+":"+b.l.Addr().String())
		wg.Add(1)
		go func(b boundListener) {
			defer wg.Done()
			if err := b.serve(b.l); !daemon.IsClosed(err) {
				serveErr <- fmt.Errorf("%s listener %s: %w", b.proto, b.l.Addr(), err)
			}
		}(b)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.metricsListener != nil {
		addrs = append(addrs, "metrics=http://"+d.metricsListener.Addr().String()+"/metrics")
		go func() {
			if err := e.metrics.Serve(runCtx, d.metricsListener); err != nil {
				log.Error("metrics listener failed", "err", err)
			}
		}()
	}
	log.Info("listening", "addresses", strings.Join(addrs, ","), "mail_root", e.cfg.Store.MailRoot, "hostname", e.hostname)
	if d.ready != nil {
		d.ready(d)
	}
	notify.Ready("serving " + strings.Join(addrs, ", "))

	go notify.Watchdog(runCtx, func() error { return nil })
	go func() {
		select {
		case err := <-serveErr:
			log.Error("listener failed; stopping", "err", err)
			cancel()
		case <-runCtx.Done():
		}
	}()
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				var parts []string
				for _, st := range d.statuses {
					parts = append(parts, st())
				}
				notify.Status(strings.Join(parts, "; "))
			}
		}
	}()

	daemon.Signals(runCtx, log, func() error {
		done := notify.Reloading()
		defer done()
		cfg, err := config.Load(d.cfgPath)
		if err != nil {
			return err
		}
		ne, err := openEnvWith(cfg, d.logw, d.env.metrics, d.env.gatePool)
		if err != nil {
			return err
		}
		ne.startSweeper()
		old := d.current.Load()
		for _, r := range d.reloaders {
			if err := r(old, ne); err != nil {
				ne.Close()
				return err
			}
		}
		if d.backend != nil {
			d.backend.Swap(ne.sources())
		}
		d.current.Store(ne)
		// Gates the reload kept log through the new configuration's
		// logger only now that it is the one in use.
		for _, g := range ne.gates {
			g.SetLogger(ne.log)
		}
		old.Close()
		return nil
	})

	notify.Stopping()
	timeout := time.Duration(d.current.Load().cfg.LMTP.ShutdownTimeout)
	sctx, scancel := context.WithTimeout(context.Background(), timeout)
	defer scancel()
	var swg sync.WaitGroup
	for _, sd := range d.shutdowns {
		swg.Add(1)
		go func(sd func(context.Context) error) {
			defer swg.Done()
			if err := sd(sctx); err != nil {
				log.Warn("shutdown timed out; closed remaining connections", "timeout", timeout, "err", err)
			}
		}(sd)
	}
	swg.Wait()
	wg.Wait()
	d.current.Load().Close()
	log.Info("stopped")
	return nil
}

// newDaemonRun loads the environment for a server process, with metrics
// served on metricsAddr when it is not "" (metrics.listen for lmtpd,
// metrics.pop3_listen for pop3d, a free port for serve --dev).
func newDaemonRun(cfg *config.Config, cfgPath string, logw io.Writer, metricsAddr string) (*daemonRun, error) {
	var m *metrics.Metrics
	var ml net.Listener
	if metricsAddr != "" {
		m = metrics.New()
		l, err := daemon.Listen(metricsAddr)
		if err != nil {
			return nil, fmt.Errorf("metrics.listen: %w", err)
		}
		ml = l
	}
	e, err := openEnvWith(cfg, logw, m, fsgate.NewPool())
	if err != nil {
		if ml != nil {
			ml.Close()
		}
		return nil, err
	}
	return &daemonRun{env: e, cfgPath: cfgPath, logw: logw, metricsListener: ml}, nil
}

// runDaemonCommand is the action of lmtpd and pop3d: load the
// configuration, open the environment with metrics on the address
// metricsAddr picks, add the servers, and run until stopped.
func runDaemonCommand(c *cli.Context, metricsAddr func(*config.Config) string, add func(*daemonRun) error) error {
	cfg, err := configFrom(c)
	if err != nil {
		return err
	}
	d, err := newDaemonRun(cfg, c.String("config"), c.App.ErrWriter, metricsAddr(cfg))
	if err != nil {
		return exitError(err.Error(), exConfig)
	}
	if err := add(d); err != nil {
		d.env.Close()
		return exitError(err.Error(), exConfig)
	}
	return d.run(c.Context)
}
