package store

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Maildir++ quota (Courier's maildirsize, also read and written by
// Dovecot's "maildir" quota backend).
//
// The file's first line is the quota definition ("<bytes>S,<count>C"); each
// following line is a "<bytes> <count>" delta appended by a delivery or a
// deletion. Usage is the sum of the deltas. The file is recalculated from
// the Maildir ("recounted") when it is missing, unreadable, carries another
// definition than the current one, has grown past 5120 bytes (the
// Maildir++ rule), or is malformed or implausible (see parseMaildirsize).
//
// Appends are not safe over NFS: the client emulates O_APPEND by writing at
// the end of file it cached when it opened the file, so two machines
// appending at once write at the same offset. One line then overwrites the
// other (a lost update) or overlays part of it, and the result may still
// parse. A lost delivery line makes the file say less than the truth, which
// is tolerable: the quota is soft by a message or two. A lost removal line
// makes it say more, which could refuse mail to a mailbox that has room. So
// appended lines are good enough to accept mail, never to refuse it: a
// refusal is decided only on a recount — one made now, or a file that holds
// nothing but a recount (written whole, by rename, so no append can have
// damaged it) at most recountInterval old. A recount is written back, so the
// other machines refusing mail to the same full mailbox use it instead of
// recounting themselves.

const (
	maildirsizeName  = "maildirsize"
	maildirsizeLimit = 5120
	// recountInterval is how long a recount is trusted for refusing mail,
	// and how often one Store recounts one mailbox to decide a refusal:
	// mail for a full mailbox costs one recount per interval, not one per
	// message (a recount lists every message: about 0.15 s for 100 000
	// messages on local disk, more over NFS; BenchmarkQuotaRecount).
	recountInterval = time.Minute
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

// refuses reports whether one more message of size bytes does not fit. At
// RCPT time the size is not known (0): only a mailbox already at its
// message limit, or past its byte limit, is refused.
func (q Quota) refuses(u Usage, size int64) bool {
	return (q.Bytes > 0 && u.Bytes+size > q.Bytes) || (q.Messages > 0 && u.Messages+1 > q.Messages)
}

// CheckQuota fails with failure.OverQuota when adding a message of size
// bytes (0 when not known yet, as at RCPT time) would exceed mb's quota.
// The refusal is permanent (unless configured to defer) only when decided
// on a recount; see the comment at the top of this file.
func (s *Store) CheckQuota(mb Mailbox, size int64) error {
	if !mb.Quota.enabled() {
		return nil
	}
	u, trusted, err := s.QuotaUsage(mb)
	if err != nil {
		return err
	}
	if !mb.Quota.refuses(u, size) {
		return nil
	}
	if !trusted {
		if !s.recounts.start(mb.Path, s.now()) {
			// This store recounted the mailbox a moment ago and lines
			// were appended since: do not list the Maildir once more per
			// message, and do not bounce on figures that may be wrong.
			// The sender retries, by when a recount is allowed again.
			return s.overQuota(mb, u, size, true, "maildirsize has appends since a recount less than "+recountInterval.String()+" ago")
		}
		if u, err = s.recalculate(mb); err != nil {
			return err
		}
		if !mb.Quota.refuses(u, size) {
			return nil
		}
	}
	return s.overQuota(mb, u, size, s.quotaDefer, "recounted")
}

func (s *Store) overQuota(mb Mailbox, u Usage, size int64, deferred bool, basis string) error {
	return &failure.Error{Kind: failure.OverQuota, Defer: deferred, Op: "quota", Reason: "mailbox full",
		Err: fmt.Errorf("usage %d bytes %d messages (%s), limit %s, message %d bytes", u.Bytes, u.Messages, basis, mb.Quota.definition(), size)}
}

// QuotaUsage returns the mailbox's usage from maildirsize (recalculating it
// when needed). trusted is true when the figure is a recount — made now,
// or found alone in the file and at most recountInterval old — and so
// good enough to refuse mail; false when it includes appended lines, which
// concurrent NFS appends may have damaged.
func (s *Store) QuotaUsage(mb Mailbox) (u Usage, trusted bool, err error) {
	path := mb.at(maildirsizeName)
	data, info, rerr := s.readSmall(path)
	if rerr == nil && info.Size < maildirsizeLimit {
		if fig, ok := parseMaildirsize(data, mb.Quota.definition()); ok {
			// A size other than what we read: someone was writing.
			whole := int64(len(data)) == info.Size && fig.wholeRecount()
			return fig.usage, whole && s.recent(info.ModTime), nil
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

// recent reports whether a file time (the file server's clock) lies within
// recountInterval of now (ours). A clock skew larger than that makes every
// recount look old: refusals then cost a recount each (rate-limited), which
// is slower but not wrong; docs/nfs.md asks for NTP.
func (s *Store) recent(t time.Time) bool {
	age := s.now().Sub(t)
	return age < recountInterval && age > -recountInterval
}

// recountLimiter remembers when this Store last recounted each mailbox to
// decide a refusal. The zero value is ready to use.
type recountLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// start reports whether a recount of the mailbox at path may start now,
// and if so records it. Entries older than recountInterval are dropped on
// the way, so the map holds only the mailboxes recounted in the last
// interval.
func (l *recountLimiter) start(path string, now time.Time) bool {
	within := func(t time.Time) bool {
		d := now.Sub(t)
		return d < recountInterval && d > -recountInterval
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[path]; ok && within(t) {
		return false
	}
	if l.last == nil {
		l.last = make(map[string]time.Time)
	}
	for p, t := range l.last {
		if !within(t) {
			delete(l.last, p)
		}
	}
	l.last[path] = now
	return true
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

// maildirsizeFigure is what a maildirsize says.
type maildirsizeFigure struct {
	usage Usage
	lines int // data lines, after the definition
}

// wholeRecount reports whether the file holds a single total and nothing
// appended: what a recount writes (here, in Courier, in Dovecot), whole,
// through a rename, so no concurrent append can have damaged it.
func (f maildirsizeFigure) wholeRecount() bool { return f.lines == 1 }

// parseMaildirsize sums the deltas; ok is false when the definition line
// differs from want, or when the file is malformed or implausible, which
// is how what NFS makes of concurrent appends mostly shows (the caller
// then recounts):
//   - a last line without "\n" (an append torn or in progress);
//   - NUL bytes (a write past the end of file the server knew: a hole);
//   - a line that is not two integers as a writer formats them: an empty
//     line, a leading zero, a "+", "-0" (the tail of a longer line that a
//     shorter one overlaid, e.g. "58 1\n" over "-660000 -2\n" leaves
//     "00 -2\n"); Courier's padding spaces are fine;
//   - an appended line with a byte delta and a message delta of opposite
//     signs, or messages without bytes (a tail such as "21 -2" or "0 -20");
//     the first line is exempt, being a recount (which may count a
//     zero-byte message);
//   - a negative total.
//
// A false alarm (a Dovecot transaction that saved one message and expunged
// two) costs one recount.
func parseMaildirsize(data []byte, want string) (fig maildirsizeFigure, ok bool) {
	if len(data) == 0 || data[len(data)-1] != '\n' || bytes.IndexByte(data, 0) >= 0 {
		return fig, false
	}
	lines := strings.Split(string(data[:len(data)-1]), "\n")
	if strings.TrimSpace(lines[0]) != want {
		return fig, false
	}
	for i, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 2 {
			return fig, false
		}
		b, ok1 := parseDelta(f[0])
		c, ok2 := parseDelta(f[1])
		if !ok1 || !ok2 {
			return fig, false
		}
		if i > 0 && ((b > 0 && c < 0) || (b < 0 && c > 0) || (b == 0 && c != 0)) {
			return fig, false
		}
		fig.usage.Bytes += b
		fig.usage.Messages += c
		fig.lines++
	}
	if fig.usage.Bytes < 0 || fig.usage.Messages < 0 {
		return fig, false
	}
	return fig, true
}

// parseDelta parses an integer as printf's %d writes it: an optional "-"
// and digits without leading zeros; "-0" is refused too.
func parseDelta(f string) (int64, bool) {
	digits := strings.TrimPrefix(f, "-")
	if digits == "" || (digits[0] == '0' && (len(digits) > 1 || len(digits) != len(f))) {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(f, 10, 64)
	return n, err == nil
}

// recalculate counts every message in the Maildir and its Maildir++
// folders (".Name" subdirectories), sizes from ,S= where present, and
// replaces maildirsize atomically (write and fsync in tmp/, rename). Any
// error but a message or folder that vanished meanwhile fails the count:
// a partial count could let a full mailbox take mail or, worse, be
// written back for every machine to use.
func (s *Store) recalculate(mb Mailbox) (Usage, error) {
	u, err := s.countMaildir(mb.at())
	if err != nil {
		return u, s.classify("quota recalculation", err)
	}
	content := fmt.Sprintf("%s\n%d %d\n", mb.Quota.definition(), u.Bytes, u.Messages)
	tmp := mb.at("tmp", s.newBase()+".maildirsize")
	if err := s.writeNewFile(tmp, []byte(content), mb, true); err != nil {
		s.log.Warn("could not write maildirsize", "path", mb.Path, "err", err)
		return u, nil // the count is right even if we could not save it
	}
	if err := s.retryStale(func() error { return s.fs.Rename(tmp, mb.at(maildirsizeName)) }); err != nil {
		if rerr := s.fs.Remove(tmp); rerr != nil && !isErrno(rerr, syscall.ENOENT) {
			s.log.Warn("could not remove a maildirsize draft; the sweeper will", "path", tmp, "err", rerr)
		}
		s.log.Warn("could not replace maildirsize", "path", mb.Path, "err", err)
	}
	return u, nil
}

// countMaildir lists new/ and cur/ of the Maildir at path and of its
// folders.
func (s *Store) countMaildir(path string) (Usage, error) {
	var u Usage
	dirs := []string{path}
	names, err := s.readDirNames(path)
	if err != nil {
		return u, err
	}
	for _, n := range names {
		if strings.HasPrefix(n, ".") && n != "." && n != ".." {
			dirs = append(dirs, filepath.Join(path, n))
		}
	}
	for _, d := range dirs {
		for _, sub := range [...]string{"new", "cur"} {
			dir := filepath.Join(d, sub)
			files, err := s.readDirNames(dir)
			if isErrno(err, syscall.ENOENT) || isErrno(err, syscall.ENOTDIR) {
				continue // not a folder, or removed meanwhile
			}
			if err != nil {
				return u, err
			}
			for _, f := range files {
				size, ok, _, _ := SizesFromName(f)
				if !ok {
					info, err := s.fs.Lstat(filepath.Join(dir, f))
					if isErrno(err, syscall.ENOENT) {
						continue // removed meanwhile
					}
					if err != nil {
						return u, err
					}
					size = info.Size
				}
				u.Bytes += size
				u.Messages++
			}
		}
	}
	return u, nil
}

// readDirNames lists dir, looking it up again after ESTALE.
func (s *Store) readDirNames(dir string) (names []string, err error) {
	err = s.retryStale(func() error { names, err = s.fs.ReadDirNames(dir); return err })
	return names, err
}

// writeNewFile creates path (O_EXCL), writes data, fsyncs it when durable,
// and closes it, checking each step; on failure the file is removed.
func (s *Store) writeNewFile(path string, data []byte, mb Mailbox, durable bool) error {
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
	if werr == nil && durable {
		werr = f.Sync()
	}
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
