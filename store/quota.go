package store

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/failure"
)

// Maildir++ quota (Courier's maildirsize, also read and written by Dovecot's
// "maildir" quota backend).
//
// The file's first line is the quota definition ("<bytes>S,<count>C"); each
// following line is a "<bytes> <count>" delta appended by a delivery or a
// deletion. Usage is the sum of the deltas. The file is recalculated from
// the Maildir when it is missing, unreadable, carries another definition
// than the current one, has grown past 5120 bytes (the Maildir++ rule), or
// says "over quota" while being older than 15 minutes (so a stale file
// does not refuse mail forever).
//
// Appends from several NFS clients are not atomic with respect to each
// other; a torn line makes the file unparsable and it is recalculated.
// maildirsize is an estimate by design, as in Courier and Dovecot.

const (
	maildirsizeName  = "maildirsize"
	maildirsizeLimit = 5120
	overQuotaRecheck = 15 * time.Minute
)

// Usage is what a Maildir holds, as maildirsize counts it.
type Usage struct{ Bytes, Messages int64 }

func (q Quota) enabled() bool { return q.Bytes > 0 || q.Messages > 0 }

// definition is the first line of maildirsize for q.
func (q Quota) definition() string {
	var parts []string
	if q.Bytes > 0 {
		parts = append(parts, strconv.FormatInt(q.Bytes, 10)+"S")
	}
	if q.Messages > 0 {
		parts = append(parts, strconv.FormatInt(q.Messages, 10)+"C")
	}
	return strings.Join(parts, ",")
}

func (q Quota) exceeded(u Usage, size int64, newMessages int64) bool {
	return (q.Bytes > 0 && u.Bytes+size > q.Bytes) || (q.Messages > 0 && u.Messages+newMessages > q.Messages)
}

// CheckQuota fails with failure.OverQuota when adding a message of size
// bytes (0 when not known yet, as at RCPT time) would exceed mb's quota.
func (s *Store) CheckQuota(mb Mailbox, size int64) error {
	if !mb.Quota.enabled() {
		return nil
	}
	u, fresh, err := s.QuotaUsage(mb)
	if err != nil {
		return err
	}
	newMsgs := int64(1)
	if size == 0 {
		newMsgs = 0 // at RCPT time only a full mailbox is refused
		if mb.Quota.Messages > 0 && u.Messages >= mb.Quota.Messages {
			newMsgs = 1
		}
	}
	if mb.Quota.exceeded(u, size, newMsgs) && !fresh {
		// An old file saying "full": recount before refusing.
		if u, err = s.recalculate(mb); err != nil {
			return err
		}
	}
	if mb.Quota.exceeded(u, size, newMsgs) {
		return &failure.Error{Kind: failure.OverQuota, Defer: s.quotaDefer, Op: "quota", Reason: "mailbox full",
			Err: fmt.Errorf("usage %d bytes %d messages, limit %s, message %d bytes", u.Bytes, u.Messages, mb.Quota.definition(), size)}
	}
	return nil
}

// QuotaUsage returns the mailbox's usage from maildirsize (recalculating it
// when needed). fresh is false when the figure came from a file older than
// the over-quota recheck interval.
func (s *Store) QuotaUsage(mb Mailbox) (u Usage, fresh bool, err error) {
	path := mb.at(maildirsizeName)
	data, info, rerr := s.readSmall(path)
	if rerr == nil && info.Size < maildirsizeLimit {
		if u, ok := parseMaildirsize(data, mb.Quota.definition()); ok {
			return u, s.now().Sub(info.ModTime) < overQuotaRecheck, nil
		}
	}
	if rerr != nil && !isErrno(rerr, syscall.ENOENT) {
		s.log.Warn("maildirsize unreadable; recalculating", "maildir", mb.Path, "err", rerr)
	}
	if _, err := s.fs.Lstat(mb.at()); isErrno(err, syscall.ENOENT) {
		return Usage{}, true, nil // no Maildir yet: empty
	}
	u, err = s.recalculate(mb)
	return u, true, err
}

func (s *Store) readSmall(path string) ([]byte, Info, error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, Info{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maildirsizeLimit*4))
	return data, info, err
}

// parseMaildirsize sums the deltas; ok is false when the definition line
// differs from want or any line is malformed.
func parseMaildirsize(data []byte, want string) (u Usage, ok bool) {
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) == 0 || strings.TrimSpace(string(lines[0])) != want {
		return Usage{}, false
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		return Usage{}, false // torn append
	}
	for _, l := range lines[1:] {
		f := strings.Fields(string(l))
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return Usage{}, false
		}
		b, err1 := strconv.ParseInt(f[0], 10, 64)
		c, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			return Usage{}, false
		}
		u.Bytes += b
		u.Messages += c
	}
	if u.Bytes < 0 {
		u.Bytes = 0
	}
	if u.Messages < 0 {
		u.Messages = 0
	}
	return u, true
}

// recalculate counts every message in the Maildir and its Maildir++
// folders (".Name" subdirectories), sizes from ,S= where present, and
// replaces maildirsize atomically (write in tmp/, rename).
func (s *Store) recalculate(mb Mailbox) (Usage, error) {
	var u Usage
	dirs := []string{mb.at()}
	names, err := s.fs.ReadDirNames(mb.at())
	if err != nil {
		return u, s.classify("quota recalculation", err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, ".") && n != "." && n != ".." {
			dirs = append(dirs, mb.at(n))
		}
	}
	for _, d := range dirs {
		for _, sub := range [...]string{"new", "cur"} {
			dir := filepath.Join(d, sub)
			files, err := s.fs.ReadDirNames(dir)
			if err != nil {
				if isErrno(err, syscall.ENOENT) || isErrno(err, syscall.ENOTDIR) {
					continue
				}
				return u, s.classify("quota recalculation", err)
			}
			for _, f := range files {
				size, ok, _, _ := SizesFromName(f)
				if !ok {
					info, err := s.fs.Lstat(filepath.Join(dir, f))
					if err != nil {
						continue // removed meanwhile
					}
					size = info.Size
				}
				u.Bytes += size
				u.Messages++
			}
		}
	}
	content := fmt.Sprintf("%s\n%d %d\n", mb.Quota.definition(), u.Bytes, u.Messages)
	tmp := mb.at("tmp", s.newBase()+".maildirsize")
	if err := s.writeFile(tmp, []byte(content), mb); err != nil {
		s.log.Warn("could not write maildirsize", "path", mb.Path, "err", err)
		return u, nil // the count is right even if we could not save it
	}
	if err := s.fs.Rename(tmp, mb.at(maildirsizeName)); err != nil {
		s.fs.Remove(tmp)
		s.log.Warn("could not replace maildirsize", "path", mb.Path, "err", err)
	}
	return u, nil
}

func (s *Store) writeFile(path string, data []byte, mb Mailbox) error {
	f, err := s.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if s.chown && (mb.UID >= 0 || mb.GID >= 0) {
		if err := f.Chown(mb.UID, mb.GID); err != nil {
			f.Close()
			s.fs.Remove(path)
			return err
		}
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		s.fs.Remove(path)
		return fmt.Errorf("write %s: %w", path, errorsJoin(werr, cerr))
	}
	return nil
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// addQuota appends a delivery's delta. Failure is logged, never fatal: the
// message is already durable and the next recalculation corrects the count.
func (s *Store) addQuota(mb Mailbox, size int64) {
	s.appendQuota(mb, size, 1)
}

// appendQuota appends a "<bytes> <count>" line in one write (O_APPEND). A
// missing file is left missing: the next check recalculates it.
func (s *Store) appendQuota(mb Mailbox, bytes, count int64) {
	if !mb.Quota.enabled() {
		return
	}
	f, err := s.fs.OpenFile(mb.at(maildirsizeName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		if !isErrno(err, syscall.ENOENT) {
			s.log.Warn("could not update maildirsize", "maildir", mb.Path, "err", err)
		}
		return
	}
	_, werr := f.Write([]byte(strconv.FormatInt(bytes, 10) + " " + strconv.FormatInt(count, 10) + "\n"))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		s.log.Warn("could not update maildirsize", "maildir", mb.Path, "err", werr)
	}
}

// RecordRemoval subtracts removed messages from maildirsize (POP3 DELE).
func (s *Store) RecordRemoval(mb Mailbox, bytes, count int64) {
	s.appendQuota(mb, -bytes, -count)
}
