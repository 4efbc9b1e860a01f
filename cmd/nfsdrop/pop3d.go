package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/daemon"
	"github.com/nfsdrop/nfsdrop/pop3"
	"github.com/nfsdrop/nfsdrop/store"
)

func pop3dCommand() *cli.Command {
	return &cli.Command{
		Name:  "pop3d",
		Usage: "run the POP3 server over the same Maildirs",
		Description: `Listens on pop3.listen (plain, with STLS when pop3.stls is true) and
pop3.listen_tls (implicit TLS), or on the sockets systemd passes with the
names "pop3" and "pop3s". Any number of machines may serve the same NFS
mail root: a session locks the mailbox with a link()-based dotlock, and
every login revalidates this machine's cached listing. SIGHUP reloads the
configuration, the user database and the TLS certificate.`,
		Flags: []cli.Flag{configFlag()},
		Action: func(c *cli.Context) error {
			return runDaemonCommand(c, func(cfg *config.Config) string { return cfg.Metrics.POP3Listen }, func(d *daemonRun) error { return d.addPOP3(nil) })
		},
	}
}

// pop3Listeners takes "pop3" and "pop3s" sockets from systemd, or binds
// pop3.listen and pop3.listen_tls. extra adds plain listeners (serve --dev).
func pop3Listeners(cfg *config.Config, extra []string) (plain, implicit []net.Listener, err error) {
	named, activated, err := daemon.Listeners("pop3", "pop3s")
	if err != nil {
		return nil, nil, err
	}
	if activated {
		if len(named["pop3"])+len(named["pop3s"]) == 0 {
			return nil, nil, errors.New(`socket activation passed no socket named "pop3" or "pop3s" (set FileDescriptorName=)`)
		}
		return named["pop3"], named["pop3s"], nil
	}
	if plain, err = bindAll(append(append([]string{}, cfg.POP3.Listen...), extra...)); err != nil {
		return nil, nil, err
	}
	if implicit, err = bindAll(cfg.POP3.ListenTLS); err != nil {
		closeAll(plain)
		return nil, nil, err
	}
	if len(plain)+len(implicit) == 0 {
		return nil, nil, errors.New("pop3.listen and pop3.listen_tls are empty and no sockets were passed by systemd")
	}
	return plain, implicit, nil
}

func sessionOptions(cfg *config.Config) store.SessionOptions {
	return store.SessionOptions{
		LockStale:  time.Duration(cfg.POP3.LockStale),
		MoveToCur:  cfg.POP3.MoveToCur,
		UIDLFormat: cfg.POP3.UIDLFormat,
	}
}

func pop3Options(cfg *config.Config, hostname string, certs *daemon.CertReloader, e *env) (pop3.Options, error) {
	o := pop3.Options{
		Hostname:        hostname,
		AllowPlaintext:  cfg.POP3.AllowPlaintext,
		DisableSTLS:     !cfg.POP3.STLS,
		IdleTimeout:     time.Duration(cfg.POP3.IdleTimeout),
		LoginTimeout:    time.Duration(cfg.POP3.LoginTimeout),
		MaxSessions:     cfg.POP3.MaxSessions,
		MaxPerIP:        cfg.POP3.MaxPerIP,
		AuthFailDelay:   time.Duration(cfg.POP3.AuthFailDelay),
		MaxAuthFailures: cfg.POP3.MaxAuthFailures,
		Logger:          e.log.With("service", "pop3"),
	}
	if certs != nil {
		o.TLSConfig = func() *tls.Config { return certs.Config() }
	}
	var err error
	if o.TrustedNetworks, err = parsePrefixes("pop3.trusted_networks", cfg.POP3.TrustedNetworks); err != nil {
		return o, err
	}
	if o.ProxyNetworks, err = parsePrefixes("pop3.proxy_networks", cfg.POP3.ProxyNetworks); err != nil {
		return o, err
	}
	return o, nil
}

// parsePrefixes parses the networks of the configuration key key.
func parsePrefixes(key string, networks []string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	for _, n := range networks {
		p, err := config.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// addPOP3 adds the POP3 server and its listeners.
func (d *daemonRun) addPOP3(extra []string) error {
	cfg := d.env.cfg
	var certs *daemon.CertReloader
	if cfg.POP3.TLSCert != "" {
		var err error
		if certs, err = daemon.LoadCert(cfg.POP3.TLSCert, cfg.POP3.TLSKey); err != nil {
			return err
		}
	}
	plain, implicit, err := pop3Listeners(cfg, extra)
	if err != nil {
		return err
	}
	if len(implicit) > 0 && certs == nil {
		return errors.New("pop3: implicit TLS listeners need pop3.tls_cert and pop3.tls_key")
	}
	opts, err := pop3Options(cfg, d.env.hostname, certs, d.env)
	if err != nil {
		return err
	}
	if d.env.metrics != nil {
		opts.Observer = d.env.metrics
	}
	srv := pop3.New(d.sharedBackend(), opts)
	for _, l := range plain {
		d.listeners = append(d.listeners, boundListener{l: l, proto: "pop3", serve: srv.Serve})
	}
	for _, l := range implicit {
		d.listeners = append(d.listeners, boundListener{l: l, proto: "pop3s", serve: srv.ServeTLS})
	}
	d.shutdowns = append(d.shutdowns, srv.Shutdown)
	if certs != nil {
		d.reloaders = append(d.reloaders, func(_, _ *env) error { return certs.Reload() })
	}
	d.statuses = append(d.statuses, func() string { return fmt.Sprintf("POP3 %d sessions", srv.Sessions()) })
	return nil
}
