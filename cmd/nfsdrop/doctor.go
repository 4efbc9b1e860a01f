package main

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/doctor"
	"github.com/nfsdrop/nfsdrop/store"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this machine's mail root (NFS mount options, marker, space, link, fsync, clock, host part)",
		Description: `Checks the mail root of the configuration as nfsdrop on this machine will use
it, and prints one row per check: OK, WARN (works, but costs time or hides a
risk) or FAIL (mail can be deferred, lost or duplicated), with the reason and
the fix. Exits 0 when nothing failed (warnings allowed), 1 when a check
failed.

The checks: the filesystem and NFS mount options of the mount holding
store.mail_root (hard, not soft; close-to-open, not nocto; noac, the
attribute cache times, lookupcache; version, locking and sync for
information); the mount marker; the mail root's owner and mode; free space
and inodes; that O_EXCL, link(), EEXIST, rename() and ENOENT behave; the
median and p99 time of a delivery-like cycle with two fsyncs; the file
server's clock against this machine's (a file's time set to the server's
time, as the POP3 lock does); and the host part of Maildir names.

Writes: a scratch directory .nfsdrop-doctor-HOSTPART-PID in the mail root,
removed afterwards, and the host claim .nfsdrop-hosts/HOSTPART in the mail
root, which holds this machine's id (/etc/machine-id; without it, the host
name and the boot id). If that file names another machine, two machines
write Maildir names with the same host part, which could collide: that is a
FAIL, and the fix is a distinct hostname in nfsdrop.toml. Run the doctor
once on every machine that shares the store so that each one claims its
host part. Nothing is written when the mount marker is missing.

With [[store.volumes]], every check runs on each volume (its path and its
marker), with one table per volume.`,
		Flags: []cli.Flag{
			configFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.IntFlag{Name: "fsync-samples", Value: doctor.DefaultFsyncSamples, Usage: "time `N` delivery-like cycles for the fsync check"},
			&cli.StringFlag{Name: "mountinfo", Value: doctor.DefaultMountInfo, Usage: "read the mount table from `FILE` (for tests)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return exitError("doctor: no arguments expected", exUsage)
			}
			if c.Int("fsync-samples") < 1 {
				return exitError("doctor: --fsync-samples must be at least 1", exUsage)
			}
			cfg, err := configFrom(c)
			if err != nil {
				return err
			}
			hostname, source := cfg.Hostname, "hostname in the configuration"
			if hostname == "" {
				if hostname, err = os.Hostname(); err != nil {
					return exitError("doctor: hostname: "+err.Error(), exConfig)
				}
				source = "the system's host name"
			}
			st, err := store.New(store.Options{
				MailRoot:    cfg.Store.MailRoot,
				MountMarker: cfg.Store.MountMarker,
				Hostname:    hostname,
			})
			if err != nil {
				return exitError(err.Error(), exConfig)
			}
			o := doctor.Options{
				MailRoot:       st.Root(),
				MountMarker:    cfg.Store.MountMarker,
				Hostname:       hostname,
				HostnameSource: source,
				HostPart:       st.HostPart(),
				MountInfo:      c.String("mountinfo"),
				FsyncSamples:   c.Int("fsync-samples"),
			}
			var rep interface {
				WriteText(io.Writer) error
				WriteJSON(io.Writer) error
				Count(doctor.Status) int
			}
			if len(cfg.Store.Volumes) == 0 {
				rep = doctor.Run(o)
			} else {
				// Each filer is checked on its own: its mount, its marker,
				// its probes, its host claim.
				var vols []doctor.Volume
				for _, v := range cfg.EffectiveVolumes() {
					vols = append(vols, doctor.Volume{Name: v.Name, Path: v.Path, MountMarker: v.MountMarker})
				}
				rep = doctor.RunVolumes(o, vols)
			}
			if c.Bool("json") {
				err = rep.WriteJSON(c.App.Writer)
			} else {
				err = rep.WriteText(c.App.Writer)
			}
			if err != nil {
				return err
			}
			if n := rep.Count(doctor.FAIL); n > 0 {
				return exitError(fmt.Sprintf("doctor: %d check(s) failed", n), 1)
			}
			return nil
		},
	}
}
