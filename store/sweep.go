package store

import (
	"path/filepath"
	"syscall"
	"time"
)

// TmpMaxAge is the Maildir rule: a file in tmp/ untouched for 36 hours is
// abandoned (a delivery that died) and may be removed.
const TmpMaxAge = 36 * time.Hour

// SweepTmp removes regular files in maildir/tmp/ whose modification and
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
		if err != nil || !info.Mode.IsRegular() {
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
	if removed > 0 {
		s.log.Info("swept old tmp files", "maildir", maildir, "count", removed, "dry_run", dryRun)
	}
	return removed, nil
}
