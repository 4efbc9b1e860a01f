package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/daemon"
	"github.com/nfsdrop/nfsdrop/internal/delivery"
	"github.com/nfsdrop/nfsdrop/lmtp"
)

func lmtpdCommand() *cli.Command {
	return &cli.Command{
		Name:  "lmtpd",
		Usage: "run the LMTP delivery agent (Postfix mailbox_transport / virtual_transport)",
		Description: `Listens on lmtp.listen, or on the sockets systemd passes with the name
"lmtp" (FileDescriptorName=lmtp). Reports READY=1, STATUS= and the watchdog
to systemd. SIGTERM stops accepting and finishes deliveries in flight (up to
lmtp.shutdown_timeout); SIGHUP reloads the configuration and the user
database (listen addresses and limits need a restart).`,
		Flags: []cli.Flag{configFlag()},
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c)
			if err != nil {
				return err
			}
			e, err := openEnv(cfg, c.App.ErrWriter)
			if err != nil {
				return exitError(err.Error(), exConfig)
			}
			ls, err := lmtpListeners(cfg)
			if err != nil {
				e.Close()
				return exitError(err.Error(), exConfig)
			}
			return serveDaemon(c.Context, e, c.String("config"), ls, c.App.ErrWriter, nil)
		},
	}
}

// lmtpListeners takes the "lmtp" sockets from systemd, or binds lmtp.listen.
func lmtpListeners(cfg *config.Config) ([]net.Listener, error) {
	named, activated, err := daemon.Listeners("lmtp")
	if err != nil {
		return nil, err
	}
	if activated {
		if len(named["lmtp"]) == 0 {
			return nil, errors.New("socket activation passed no socket named \"lmtp\" (set FileDescriptorName=lmtp)")
		}
		return named["lmtp"], nil
	}
	var ls []net.Listener
	for _, spec := range cfg.LMTP.Listen {
		l, err := daemon.Listen(spec)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, errors.New("lmtp.listen is empty and no sockets were passed by systemd")
	}
	return ls, nil
}

// agentSwitch lets SIGHUP swap the user database and store under a
// running server: each recipient resolves through the current agent.
type agentSwitch struct{ p atomic.Pointer[delivery.Agent] }

func (s *agentSwitch) Resolve(ctx context.Context, addr string) (lmtp.Recipient, error) {
	return s.p.Load().LMTP().Resolve(ctx, addr)
}

func (s *agentSwitch) Stage(ctx context.Context, first lmtp.Recipient, msg io.Reader) (lmtp.Staged, error) {
	return s.p.Load().LMTP().Stage(ctx, first, msg)
}

func lmtpOptions(cfg *config.Config, hostname string, log *slog.Logger) lmtp.Options {
	return lmtp.Options{
		Hostname:           hostname,
		MaxMessageSize:     int64(cfg.LMTP.MaxMessageSize),
		MaxRecipients:      cfg.LMTP.MaxRecipients,
		MaxUserConcurrency: cfg.LMTP.MaxUserConcurrency,
		MaxConnections:     cfg.LMTP.MaxConnections,
		MaxLineLength:      cfg.LMTP.MaxLineLength,
		ReadTimeout:        time.Duration(cfg.LMTP.ReadTimeout),
		WriteTimeout:       time.Duration(cfg.LMTP.WriteTimeout),
		DeliveredToAlways:  cfg.LMTP.DeliveredTo == "always",
		Logger:             log.With("service", "lmtp"),
	}
}

// serveDaemon runs the LMTP server on ls until SIGTERM/SIGINT or ctx ends.
// ready, when set, is called with the listeners once they accept.
func serveDaemon(ctx context.Context, e *env, cfgPath string, ls []net.Listener, logw io.Writer, ready func([]net.Listener)) error {
	log := e.log
	notify := daemon.NewNotifier(log)
	var current atomic.Pointer[env]
	current.Store(e)
	sw := &agentSwitch{}
	sw.p.Store(e.agent())

	srv := lmtp.New(sw, lmtpOptions(e.cfg, e.hostname, log))
	var wg sync.WaitGroup
	serveErr := make(chan error, len(ls))
	var addrs []string
	for _, l := range ls {
		addrs = append(addrs, l.Addr().Network()+":"+l.Addr().String())
		wg.Add(1)
		go func(l net.Listener) {
			defer wg.Done()
			if err := srv.Serve(l); !daemon.IsClosed(err) {
				serveErr <- err
			}
		}(l)
	}
	log.Info("lmtp listening", "addresses", strings.Join(addrs, ","), "mail_root", e.cfg.Store.MailRoot, "hostname", e.hostname)
	if ready != nil {
		ready(ls)
	}
	notify.Ready(fmt.Sprintf("accepting LMTP on %s", strings.Join(addrs, ", ")))

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go notify.Watchdog(runCtx, func() error { return nil })
	go func() {
		select {
		case err := <-serveErr:
			log.Error("lmtp listener failed", "err", err)
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
				notify.Status(fmt.Sprintf("accepting LMTP on %s; %d connections", strings.Join(addrs, ", "), srv.Connections()))
			}
		}
	}()

	reload := func() error {
		done := notify.Reloading()
		defer done()
		cfg, err := config.Load(cfgPath)
		if err != nil {
			return err
		}
		ne, err := openEnv(cfg, logw)
		if err != nil {
			return err
		}
		old := current.Swap(ne)
		sw.p.Store(ne.agent())
		old.Close()
		return nil
	}
	daemon.Signals(runCtx, log, reload)

	notify.Stopping()
	timeout := time.Duration(current.Load().cfg.LMTP.ShutdownTimeout)
	sctx, scancel := context.WithTimeout(context.Background(), timeout)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown timed out; closed remaining connections", "timeout", timeout, "err", err)
	}
	wg.Wait()
	current.Load().Close()
	log.Info("stopped")
	return nil
}
