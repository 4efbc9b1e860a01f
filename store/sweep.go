package store

import (
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-maildir"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// TmpMaxAge is the Maildir rule: a file in tmp/ untouched for 36 hours is
// abandoned (a delivery that died) and may be removed.
const TmpMaxAge = 36 * time.Hour

// isLockLeftover reports whether a tmp/ entry is a symlink the session
// lock made there (a clock probe, a lock renamed aside) and a crash left.
func isLockLeftover(name string, info Info) bool {
	return info.Mode&fs.ModeSymlink != 0 && (strings.HasSuffix(name, ClockProbeSuffix) || strings.HasSuffix(name, StaleLockSuffix))
}

// SweepTmp removes regular files (and the session lock's symlinks) in maildir/tmp/ whose modification and
// change times are both older than maxAge, and returns how many it removed
// (or would remove, with dryRun). It never looks at new/ or cur/. It is not
// on the delivery path: daemons call it on a timer, administrators through
// `nfsdrop maildir clean`.
func (s *Store) SweepTmp(maildir string, maxAge time.Duration, dryRun bool) (int, error) {
	dir := filepath.Join(maildir, "tmp")
	names, err := s.fs.ReadDirNames(dir)
	if err != nil {
		if isErrno(err, syscall.ENOENT) {
			return 0, nil
		}
		return 0, s.classify("sweep tmp", err)
	}
	cutoff := s.now().Add(-maxAge)
	removed := 0
	for _, n := range names {
		p := filepath.Join(dir, n)
		info, err := s.fs.Lstat(p)
		if err != nil || !(info.Mode.IsRegular() || isLockLeftover(n, info)) {
			continue
		}
		if info.ModTime.After(cutoff) || info.ChangeAt.After(cutoff) {
			continue
		}
		if !dryRun {
			if err := s.fs.Remove(p); err != nil {
				if !isErrno(err, syscall.ENOENT) {
					s.log.Warn("could not remove old tmp file", "path", p, "err", err)
				}
				continue
			}
		}
		removed++
	}
	if removed > 0 && !dryRun {
		s.obs.TmpSwept(removed)
	}
	if removed > 0 {
		s.log.Info("swept old tmp files", "maildir", maildir, "count", removed, "dry_run", dryRun)
	}
	return removed, nil
}

// SweepTree sweeps every Maildir (and Maildir++ folder) found under root:
// any directory holding cur/, new/ and tmp/, and the spool's tmp/ (see
// SpoolName) when it lies under root. It returns the files removed and the
// Maildirs visited (the spool is not counted as one); it keeps going past
// a directory it cannot sweep and returns the first such error at the end.
func (s *Store) SweepTree(root string, maxAge time.Duration, dryRun bool) (removed, maildirs int, err error) {
	var first error
	walkErr := filepath.WalkDir(root, func(p string, d fs.DirEntry, werr error) error {
		if werr != nil {
			if first == nil {
				first = werr
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		switch d.Name() {
		case "cur", "new", "tmp":
			return fs.SkipDir
		}
		isSpool := filepath.Clean(p) == s.spoolDir()
		if !isSpool && !s.isMaildir(p) {
			return nil
		}
		if !isSpool {
			maildirs++
		}
		n, err := s.SweepTmp(p, maxAge, dryRun)
		removed += n
		if err != nil && first == nil {
			first = err
		}
		if isSpool {
			return fs.SkipDir // nothing but tmp/ belongs there
		}
		return nil
	})
	if first == nil {
		first = walkErr
	}
	return removed, maildirs, first
}

func (s *Store) isMaildir(p string) bool {
	for _, sub := range [...]string{"cur", "new", "tmp"} {
		info, err := s.fs.Lstat(filepath.Join(p, sub))
		if err != nil || !info.Mode.IsDir() {
			return false
		}
	}
	return true
}

// CheckReport is what Check finds in a Maildir.
type CheckReport struct {
	New, Cur, Tmp, OldTmp int
	Bytes                 int64
	// Seen and Trashed count messages in cur/ with the S and T flags;
	// NoInfo those in cur/ whose name has no version 2 info section
	// (":2,"), which IMAP servers and POP3's move to cur/ always add.
	Seen, Trashed, NoInfo int
}

// countFlags counts the flags of a message name in cur/.
func (r *CheckReport) countFlags(name string) {
	flags, ok := InfoFlags(name)
	if !ok {
		r.NoInfo++
		return
	}
	if slices.Contains(flags, maildir.FlagSeen) {
		r.Seen++
	}
	if slices.Contains(flags, maildir.FlagTrashed) {
		r.Trashed++
	}
}

// Check verifies that path is a Maildir (cur/, new/, tmp/ directories)
// and counts its messages.
func (s *Store) Check(path string) (CheckReport, error) {
	var r CheckReport
	if !s.isMaildir(path) {
		return r, failure.Perm("maildir check", "not a Maildir (cur/, new/ and tmp/ must be directories)", nil)
	}
	cutoff := s.now().Add(-TmpMaxAge)
	for _, sub := range [...]string{"new", "cur", "tmp"} {
		dir := filepath.Join(path, sub)
		names, err := s.fs.ReadDirNames(dir)
		if err != nil {
			return r, s.classify("maildir check", err)
		}
		for _, n := range names {
			switch sub {
			case "tmp":
				r.Tmp++
				if info, err := s.fs.Lstat(filepath.Join(dir, n)); err == nil && info.ModTime.Before(cutoff) {
					r.OldTmp++
				}
				continue
			case "new":
				r.New++
			default:
				r.Cur++
				r.countFlags(n)
			}
			size, ok, _, _ := SizesFromName(n)
			if !ok {
				if info, err := s.fs.Lstat(filepath.Join(dir, n)); err == nil {
					size = info.Size
				}
			}
			r.Bytes += size
		}
	}
	return r, nil
}
