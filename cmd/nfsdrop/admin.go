package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "validate the configuration and print the effective settings",
		ArgsUsage: "[ADDRESS...]",
		Description: `Loads the configuration strictly (an unknown key is an error naming its
line), validates every value, opens the user database and reports its
problems, lists the volumes, shows for each ADDRESS given which volume
its mailbox lives on (named by the user database, or placed), then prints
the effective configuration with every default.`,
		Flags: []cli.Flag{configFlag()},
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c)
			if err != nil {
				return err
			}
			problems := 0
			log := newLogger(cfg, c.App.ErrWriter)
			hostname := cfg.Hostname
			if hostname == "" {
				hostname = "check" // names no file: check writes nothing
			}
			vols, gates, err := openVolumes(cfg, hostname, log, nil, nil, nil)
			if err != nil {
				return exitError(err.Error(), exConfig)
			}
			users, err := openUserDB(cfg, log, vols, gates)
			if err != nil {
				return exitError(err.Error(), exConfig)
			}
			defer users.Close()
			for _, v := range vols.Volumes() {
				fmt.Fprintf(c.App.ErrWriter, "volume %s: %s (marker %q, new mailboxes %v)\n", v.Name, v.Path, markerOf(cfg, v.Name), v.NewMailboxes)
			}
			for _, a := range c.Args().Slice() {
				u, err := users.Lookup(c.Context, a)
				if err != nil {
					fmt.Fprintf(c.App.ErrWriter, "%s: %s (%v)\n", a, failure.As(err).Kind, err)
					problems++
					continue
				}
				fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", a, whereString(c.Context, vols, u))
			}
			if pf, ok := users.(*userdb.PasswdFile); ok {
				for _, p := range pf.Problems() {
					fmt.Fprintln(c.App.ErrWriter, "warning:", p)
					problems++
				}
				fmt.Fprintf(c.App.ErrWriter, "%s: %d users\n", cfg.UserDB.PasswdFile, pf.Users())
			}
			if err := cfg.WriteTOML(c.App.Writer); err != nil {
				return err
			}
			if problems > 0 {
				return exitError(fmt.Sprintf("%d problem(s) in the user database", problems), exConfig)
			}
			return nil
		},
	}
}

func userCommand() *cli.Command {
	return &cli.Command{
		Name:  "user",
		Usage: "look users up and test passwords as nfsdrop sees them",
		Subcommands: []*cli.Command{
			{
				Name:      "lookup",
				Usage:     "show what a recipient address resolves to",
				ArgsUsage: "ADDRESS",
				Flags:     []cli.Flag{configFlag()},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return exitError("user lookup: one ADDRESS expected", exUsage)
					}
					e, err := envFrom(c)
					if err != nil {
						return err
					}
					defer e.Close()
					u, err := e.users.Lookup(context.Background(), c.Args().First())
					if err != nil {
						fe := failure.As(err)
						return exitError(fmt.Sprintf("%s: %s (%v)", c.Args().First(), fe.Kind, err), exitCode(err))
					}
					w := c.App.Writer
					fmt.Fprintf(w, "name:     %s\naddress:  %s\nmailbox:  %s\nuid:gid:  %d:%d\nquota:    %s\nenabled:  %v\n",
						u.Name, u.Address, u.Mailbox, u.UID, u.GID, quotaString(u.Quota), u.Enabled)
					fmt.Fprintf(w, "volume:   %s\n", whereString(c.Context, e.volumes, u))
					vol, mb, err := e.volumes.Locate(c.Context, u)
					if err != nil {
						return nil
					}
					if usage, _, err := vol.Store.QuotaUsage(mb); err == nil && (mb.Quota.Bytes > 0 || mb.Quota.Messages > 0) {
						fmt.Fprintf(w, "usage:    %d bytes, %d messages\n", usage.Bytes, usage.Messages)
					}
					return nil
				},
			},
			{
				Name:      "auth",
				Usage:     "check a password (read from standard input) for a login name",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{configFlag()},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return exitError("user auth: one NAME expected", exUsage)
					}
					e, err := envFrom(c)
					if err != nil {
						return err
					}
					defer e.Close()
					fmt.Fprint(c.App.ErrWriter, "Password: ")
					line, _ := bufio.NewReader(c.App.Reader).ReadString('\n')
					pw := strings.TrimRight(line, "\r\n")
					u, err := e.users.Authenticate(context.Background(), c.Args().First(), pw)
					if err != nil {
						fe := failure.As(err)
						return exitError(fmt.Sprintf("%s: %s", c.Args().First(), fe.Reason), exitCode(err))
					}
					fmt.Fprintf(c.App.Writer, "ok: %s (%s)\n", u.Name, u.Mailbox)
					return nil
				},
			},
		},
	}
}

// whereString says which volume u's mailbox lives on, and why: named by
// the user database, or placed (found where it exists, or where a new one
// would be created).
func whereString(ctx context.Context, vols *volume.Set, u *userdb.User) string {
	v, mb, err := vols.Locate(ctx, u)
	switch {
	case err != nil:
		return fmt.Sprintf("unavailable (%v)", err)
	case len(vols.Volumes()) == 1 && u.Volume == "":
		return fmt.Sprintf("%s (the only volume), %s", v.Name, mb.Path)
	case u.Volume != "":
		return fmt.Sprintf("%s (named by the user database), %s", v.Name, mb.Path)
	}
	return fmt.Sprintf("%s (placed), %s", v.Name, mb.Path)
}

// markerOf is the mount marker of the volume called name.
func markerOf(cfg *config.Config, name string) string {
	for _, v := range cfg.EffectiveVolumes() {
		if v.Name == name {
			return v.MountMarker
		}
	}
	return ""
}

func quotaString(q userdb.Quota) string {
	if q.Bytes == 0 && q.Messages == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%d bytes, %d messages (0 = unlimited)", q.Bytes, q.Messages)
}

func maildirCommand() *cli.Command {
	storeFor := func(c *cli.Context) (*env, string, error) {
		if c.NArg() != 1 {
			return nil, "", exitError(c.Command.Name+": one PATH expected", exUsage)
		}
		e, err := envFrom(c)
		if err != nil {
			return nil, "", err
		}
		p, err := filepath.Abs(c.Args().First())
		return e, p, err
	}
	// storeOf is the store of the volume p lies on.
	storeOf := func(e *env, p string) (*store.Store, error) {
		v := e.volumes.Holding(p)
		if p != v.Path && !strings.HasPrefix(p, v.Path+"/") {
			return nil, exitError(p+": not on a configured volume", exUsage)
		}
		return v.Store, nil
	}
	return &cli.Command{
		Name:  "maildir",
		Usage: "check, create and clean Maildirs",
		Subcommands: []*cli.Command{
			{
				Name:      "check",
				Usage:     "check a Maildir's structure and print its usage",
				ArgsUsage: "PATH",
				Flags:     []cli.Flag{configFlag()},
				Action: func(c *cli.Context) error {
					e, p, err := storeFor(c)
					if err != nil {
						return err
					}
					defer e.Close()
					st, err := storeOf(e, p)
					if err != nil {
						return err
					}
					rep, err := st.Check(p)
					if err != nil {
						return exitError(err.Error(), exitCode(err))
					}
					fmt.Fprintf(c.App.Writer, "%s: ok\nnew: %d messages\ncur: %d messages\ntmp: %d files (%d older than %s)\nsize: %d bytes\n",
						p, rep.New, rep.Cur, rep.Tmp, rep.OldTmp, store.TmpMaxAge, rep.Bytes)
					fmt.Fprintf(c.App.Writer, "cur flags: %d seen, %d trashed, %d without an info section (:2,)\n",
						rep.Seen, rep.Trashed, rep.NoInfo)
					return nil
				},
			},
			{
				Name:      "create",
				Usage:     "create a Maildir (new/ cur/ tmp/, mode 0700) under the mail root",
				ArgsUsage: "PATH",
				Flags: []cli.Flag{configFlag(),
					&cli.IntFlag{Name: "uid", Value: -1, Usage: "owner `UID` (when run as root)"},
					&cli.IntFlag{Name: "gid", Value: -1, Usage: "owner `GID` (when run as root)"}},
				Action: func(c *cli.Context) error {
					e, p, err := storeFor(c)
					if err != nil {
						return err
					}
					defer e.Close()
					st, err := storeOf(e, p)
					if err != nil {
						return err
					}
					if err := st.EnsureMaildir(store.Mailbox{Path: p, UID: c.Int("uid"), GID: c.Int("gid")}); err != nil {
						return exitError(err.Error(), exitCode(err))
					}
					fmt.Fprintln(c.App.Writer, "created", p)
					return nil
				},
			},
			moveCommand(),
			{
				Name:      "clean",
				Usage:     "remove files in tmp/ older than store.tmp_max_age (36h) from every Maildir under ROOT (mail_root: every volume)",
				ArgsUsage: "ROOT",
				Flags: []cli.Flag{configFlag(),
					&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "only count what would be removed"}},
				Action: func(c *cli.Context) error {
					e, p, err := storeFor(c)
					if err != nil {
						return err
					}
					defer e.Close()
					n, dirs, err := sweepTrees(e, p, time.Duration(e.cfg.Store.TmpMaxAge), c.Bool("dry-run"))
					verb := "removed"
					if c.Bool("dry-run") {
						verb = "would remove"
					}
					fmt.Fprintf(c.App.Writer, "%s %d old tmp files in %d maildirs\n", verb, n, dirs)
					if err != nil {
						return exitError(err.Error(), exitCode(err))
					}
					return nil
				},
			},
		},
	}
}

// sweepTrees sweeps the Maildirs under root: with the store of the volume
// root lies on, or, for a directory holding volumes (mail_root), on each
// of those volumes with its own store.
func sweepTrees(e *env, root string, maxAge time.Duration, dryRun bool) (removed, maildirs int, err error) {
	if v := e.volumes.Holding(root); root == v.Path || strings.HasPrefix(root, v.Path+"/") {
		return v.Store.SweepTree(root, maxAge, dryRun)
	}
	var errs []error
	for _, v := range e.volumes.Volumes() {
		if !strings.HasPrefix(v.Path, root+"/") && root != "/" {
			continue
		}
		n, d, err := v.Store.SweepTree(v.Path, maxAge, dryRun)
		removed, maildirs = removed+n, maildirs+d
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		}
	}
	return removed, maildirs, errors.Join(errs...)
}

// envFrom loads the config and opens the environment, exiting with
// EX_CONFIG on trouble.
func envFrom(c *cli.Context) (*env, error) {
	cfg, err := configFrom(c)
	if err != nil {
		return nil, err
	}
	e, err := openEnv(cfg, c.App.ErrWriter)
	if err != nil {
		return nil, exitError(err.Error(), exConfig)
	}
	return e, nil
}

// moveCommand is "nfsdrop maildir move": an online move of a user's
// Maildir to another volume (store.Move), resumable and, until the new
// copy is published, reversible.
func moveCommand() *cli.Command {
	return &cli.Command{
		Name:  "move",
		Usage: "move a user's Maildir to another volume while mail and POP3 go on (run again to resume)",
		Description: "Copies the Maildir of ADDRESS to the same path on VOLUME, switches every machine over to it and\n" +
			"leaves a tombstone in the old place that forwards deliveries and logins. Interrupted (even by\n" +
			"kill -9), run it again to resume, or use --rollback before the new copy is published.\n" +
			"Afterwards, name VOLUME in the user database; the tombstone must stay until every machine\n" +
			"finds the mailbox there without it.",
		ArgsUsage: "ADDRESS VOLUME",
		Flags: []cli.Flag{configFlag(),
			&cli.BoolFlag{Name: "rollback", Usage: "undo an unfinished move (before the new copy is published)"},
			&cli.BoolFlag{Name: "status", Usage: "only say where a move of ADDRESS to VOLUME stands"},
			&cli.DurationFlag{Name: "lock-wait", Value: 2 * time.Minute, Usage: "how long to wait for a POP3 session holding the mailbox"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return exitError("maildir move: ADDRESS and VOLUME expected", exUsage)
			}
			addr, to := c.Args().Get(0), c.Args().Get(1)
			e, err := envFrom(c)
			if err != nil {
				return err
			}
			defer e.Close()
			ctx := context.Background()
			u, err := e.users.Lookup(ctx, addr)
			if err != nil {
				return exitError(fmt.Sprintf("%s: %s", addr, failure.As(err).Reason), exitCode(err))
			}
			dst := e.volumes.ByName(to)
			if dst == nil {
				return exitError(fmt.Sprintf("maildir move: %q is not a configured volume", to), exUsage)
			}
			src, srcMb, err := e.volumes.Locate(ctx, u)
			if err != nil {
				return exitError(fmt.Sprintf("%s: %v", addr, err), exitCode(err))
			}
			// A mailbox moved before lives where its tombstone says (the
			// user database may not name that volume yet). A tombstone
			// naming VOLUME itself is this very move, to be resumed.
			for hops := 0; hops < 3; hops++ {
				next, err := src.Store.MovedTo(srcMb)
				if err != nil {
					return exitError(fmt.Sprintf("%s: %v", addr, err), exitCode(err))
				}
				if next == "" || next == to {
					break
				}
				if src, srcMb, err = e.volumes.Relocate(src, srcMb, next); err != nil {
					return exitError(fmt.Sprintf("%s: moved to volume %s: %v", addr, next, err), exitCode(err))
				}
			}
			if src == dst {
				fmt.Fprintf(c.App.Writer, "%s: already on volume %s (%s)\n", addr, to, srcMb.Path)
				return nil
			}
			_, dstMb, err := e.volumes.Relocate(src, srcMb, to)
			if err != nil {
				return exitError(fmt.Sprintf("%s: volume %s: %v", addr, to, err), exitCode(err))
			}
			out := c.App.Writer
			if c.Bool("status") {
				st, err := store.InspectMove(ctx, src.Store, srcMb, dst.Store, dstMb)
				if err != nil {
					return exitError(err.Error(), exitCode(err))
				}
				fmt.Fprintf(out, "%s: %s on %s -> %s on %s: %s\n", addr, srcMb.Path, src.Name, dstMb.Path, to, st.State)
				return nil
			}
			o := store.MoveOptions{
				LockStale: time.Duration(e.cfg.POP3.LockStale),
				LockWait:  c.Duration("lock-wait"),
				Owner:     "maildir-move@" + e.hostname,
				Progress: func(st store.MoveStep) {
					if st != store.StepLockWait {
						e.log.Info("maildir move", "address", addr, "from", src.Name, "to", to, "step", string(st))
					}
				},
			}
			if c.Bool("rollback") {
				if err := store.RollbackMove(ctx, src.Store, srcMb, dst.Store, dstMb, to, o); err != nil {
					return exitError(fmt.Sprintf("%s: rollback: %v", addr, err), exitCode(err))
				}
				fmt.Fprintf(out, "%s: move to %s rolled back; the mailbox is %s on %s\n", addr, to, srcMb.Path, src.Name)
				return nil
			}
			rep, err := store.Move(ctx, src.Store, srcMb, dst.Store, dstMb, to, o)
			if err != nil {
				return exitError(fmt.Sprintf("%s: move to %s: %v (run the same command again to resume, or with --rollback)", addr, to, err), exitCode(err))
			}
			resumed := ""
			if rep.Resumed {
				resumed = " (resumed)"
			}
			fmt.Fprintf(out, "%s: moved%s from %s to %s: %d messages, %d bytes, %d files copied in %d rounds\n",
				addr, resumed, src.Name, to, rep.Messages, rep.Bytes, rep.Copied, rep.Rounds)
			rel, _ := filepath.Rel(dst.Path, dstMb.Path)
			fmt.Fprintf(out, "now: %s\nname the volume in the user database, e.g. the mailbox path %s:%s (or %s);\n"+
				"keep the tombstone at %s until every machine's user lookups say so\n", dstMb.Path, to, rel, dstMb.Path, srcMb.Path)
			return nil
		},
	}
}
