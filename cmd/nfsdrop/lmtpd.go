package main

import (
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/daemon"
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
			return runDaemonCommand(c, func(cfg *config.Config) string { return cfg.Metrics.Listen }, (*daemonRun).addLMTP)
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
	ls, err := bindAll(cfg.LMTP.Listen)
	if err != nil {
		return nil, err
	}
	if len(ls) == 0 {
		return nil, errors.New("lmtp.listen is empty and no sockets were passed by systemd")
	}
	return ls, nil
}

// bindAll binds every one of specs (daemon.Listen), or none: on an error
// it closes those it had bound.
func bindAll(specs []string) ([]net.Listener, error) {
	var ls []net.Listener
	for _, spec := range specs {
		l, err := daemon.Listen(spec)
		if err != nil {
			closeAll(ls)
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
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
