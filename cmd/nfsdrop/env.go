package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/backend"
	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/fsgate"
	"github.com/nfsdrop/nfsdrop/internal/metrics"
	"github.com/nfsdrop/nfsdrop/internal/scan"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/store"
)

// env is what every command builds from the configuration.
type env struct {
	cfg      *config.Config
	log      *slog.Logger
	hostname string
	users    userdb.DB
	// volumes are the volumes mailboxes live on, each with its store
	// (one, "default", at mail_root without [[store.volumes]]).
	volumes *volume.Set
	metrics *metrics.Metrics // nil for commands that export none
	scan    *backend.ScanPolicy

	sweepStop chan struct{} // closed by Close when a daemon started the sweeper
	// gates guard each volume's file system (one per volume, in order).
	// A daemon's come from its gatePool, which runs their probes and
	// keeps them across reloads; a command's have no probe.
	gates    []*fsgate.Gate
	gatePool *fsgate.Pool
}

// startSweeper makes each volume's store sweep tmp/ of the Maildirs it
// uses, in the background, until Close (daemons only).
func (e *env) startSweeper() {
	e.sweepStop = make(chan struct{})
	for _, v := range e.volumes.Volumes() {
		v.Store.StartSweeper(e.sweepStop, time.Duration(e.cfg.Store.TmpMaxAge))
	}
}

// loadConfig reads and validates the configuration; errors exit with
// EX_CONFIG and name the file, line and key.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, exitError(err.Error(), exConfig)
	}
	return cfg, nil
}

// configFrom loads the config named by --config.
func configFrom(c *cli.Context) (*config.Config, error) { return loadConfig(c.String("config")) }

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	switch cfg.Log.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// openEnv builds the logger, the user database and the store. A problem
// here is a configuration or environment problem: the caller decides the
// exit code (deliver must answer EX_TEMPFAIL so that mail waits).
func openEnv(cfg *config.Config, logw io.Writer) (*env, error) {
	return openEnvWith(cfg, logw, nil, nil)
}

// openEnvWith is openEnv with metrics (nil: none) wired into the store
// and the user database, and the volumes' gates from pool (a daemon's;
// nil: gates without a health probe, for a command).
func openEnvWith(cfg *config.Config, logw io.Writer, m *metrics.Metrics, pool *fsgate.Pool) (*env, error) {
	e := &env{cfg: cfg, log: newLogger(cfg, logw), metrics: m, gatePool: pool}
	e.hostname = cfg.Hostname
	if e.hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("hostname: %w", err)
		}
		e.hostname = h
	}
	var obs store.Observer
	if m != nil {
		obs = m
	}
	vols, gates, err := openVolumes(cfg, e.hostname, e.log, obs, m, pool)
	e.gates = gates
	if err != nil {
		e.Close()
		return nil, err
	}
	e.volumes = vols
	users, err := openUserDB(cfg, e.log, vols, gates)
	if err != nil {
		e.Close()
		return nil, err
	}
	e.users = users
	if m != nil {
		e.users = m.UserDB(users)
	}
	if e.scan, err = openScanner(cfg, e.log, m); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// openVolumes makes the store of each volume (config.EffectiveVolumes),
// each behind its own hung-filer gate (internal/fsgate): its calls are
// bounded by store.volume_max_calls and fail at once while the volume's
// health probe says it is down. The probes run only in daemons
// (gates from pool, which runs them); a command's gate (pool nil) still
// bounds and times out its calls. The gates are returned with the error
// too, for the caller to give back.
func openVolumes(cfg *config.Config, hostname string, log *slog.Logger, obs store.Observer, m *metrics.Metrics, pool *fsgate.Pool) (*volume.Set, []*fsgate.Gate, error) {
	o := volume.Options{MailRoot: cfg.Store.MailRoot}
	var gates []*fsgate.Gate
	for _, v := range cfg.EffectiveVolumes() {
		vlog := log.With("volume", v.Name)
		gopts := fsgate.Options{
			Volume:        v.Name,
			MaxCalls:      cfg.Store.VolumeMaxCalls,
			CallWait:      time.Duration(cfg.Store.VolumeCallWait),
			ProbeInterval: time.Duration(cfg.Store.VolumeProbeInterval),
			ProbeTimeout:  time.Duration(cfg.Store.VolumeProbeTimeout),
			Logger:        log,
		}
		vobs := obs
		if m != nil {
			vm := m.Volume(v.Name)
			gopts.Observer, vobs = vm, vm
		}
		var g *fsgate.Gate
		if pool != nil {
			g = pool.Get(v.Path, v.MountMarker, gopts)
		} else {
			g = fsgate.ForVolume(nil, v.Path, v.MountMarker, gopts)
		}
		gates = append(gates, g)
		o.Volumes = append(o.Volumes, volume.VolumeOptions{
			Name: v.Name, Path: v.Path, MountMarker: v.MountMarker, NewMailboxes: v.NewMailboxes,
			FS:  g.FS(),
			Err: g.Err,
			StoreOptions: store.Options{
				Observer:      vobs,
				Hostname:      hostname,
				QuotaDefer:    cfg.Store.QuotaAction == "defer",
				ESTALERetries: cfg.Store.EstaleRetries,
				Logger:        vlog,
			},
		})
	}
	set, err := volume.Open(o)
	if err != nil {
		return nil, gates, err
	}
	return set, gates, nil
}

// openUserDB opens the source named by userdb.driver; config converts the
// keys to its options (and validated them with userdb's own parsers). The
// volumes' health makes a lookup of a user on a down volume fail at once.
func openUserDB(cfg *config.Config, log *slog.Logger, vols *volume.Set, gates []*fsgate.Gate) (userdb.DB, error) {
	withHealth := func(roots []userdb.VolumeRoot) []userdb.VolumeRoot {
		for i := range roots {
			if v := vols.ByName(roots[i].Name); v != nil {
				roots[i].Err = v.Err
			}
			for _, g := range gates {
				if g.Volume() == roots[i].Name {
					roots[i].Guard = g.DoLookup
				}
			}
		}
		return roots
	}
	switch cfg.UserDB.Driver {
	case "passwd-file":
		o := cfg.PasswdFileOptions()
		o.Logger = log
		o.Volumes = withHealth(o.Volumes)
		return userdb.OpenPasswdFile(o)
	case "ldap":
		o := cfg.LDAPOptions()
		o.Logger = log
		o.Volumes = withHealth(o.Volumes)
		return userdb.OpenLDAP(o)
	}
	return nil, errors.New("userdb.driver " + cfg.UserDB.Driver + " is not supported")
}

// sources is what the backend (deliveries and POP3 logins) uses.
func (e *env) sources() *backend.Sources {
	return &backend.Sources{Users: e.users, Volumes: e.volumes, Scan: e.scan, Session: sessionOptions(e.cfg), Hostname: e.hostname}
}

// backend makes a backend over e's sources.
func (e *env) backend() *backend.Backend {
	return backend.New(e.sources(), backend.Options{Logger: e.log, CommitDeadline: time.Duration(e.cfg.LMTP.CommitDeadline)})
}

// openScanner builds the virus scanning policy from [scan] (nil when off).
func openScanner(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) (*backend.ScanPolicy, error) {
	if !cfg.Scan.Enabled {
		return nil, nil
	}
	o := scan.Options{
		Addresses:       cfg.Scan.Clamd,
		Timeout:         time.Duration(cfg.Scan.Timeout),
		StreamMaxLength: int64(cfg.Scan.StreamMaxLength),
		OnTooLarge:      cfg.Scan.OnTooLarge,
		Logger:          log.With("service", "scan"),
	}
	if m != nil {
		o.Observe = m.ScanOutcome
	}
	sc, err := scan.New(o)
	if err != nil {
		return nil, fmt.Errorf("[scan]: %w", err)
	}
	return &backend.ScanPolicy{
		Scanner:    sc,
		Action:     cfg.Scan.Action,
		Quarantine: store.Mailbox{Path: cfg.Scan.QuarantineMaildir, UID: -1, GID: -1},
		FailOpen:   cfg.Scan.FailOpen,
		Log:        log.With("service", "scan"),
	}, nil
}

func (e *env) Close() {
	if e.gatePool != nil {
		for _, g := range e.gates {
			e.gatePool.Put(g)
		}
		e.gates = nil
	}
	if e.sweepStop != nil {
		close(e.sweepStop)
		e.sweepStop = nil
	}
	if e.users != nil {
		e.users.Close()
	}
}
