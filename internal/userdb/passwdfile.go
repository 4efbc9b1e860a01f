package userdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// PasswdFileOptions configures a passwd-file user source.
type PasswdFileOptions struct {
	// Path is the passwd-file, in Dovecot's format.
	Path string
	// MailRoot is absolute; every mailbox must lie under it.
	MailRoot string
	// Volumes are the configured volumes below MailRoot (none: MailRoot is
	// the one volume). A mailbox path "NAME:rel/path" or an absolute path
	// under a volume's path is on that volume, and confined to it.
	Volumes []VolumeRoot
	// MaildirName is the subdirectory of home holding the Maildir; "" means
	// home itself is the Maildir.
	MaildirName string
	// Normalizer normalises both looked-up addresses and the user names in
	// the file.
	Normalizer Normalizer
	// DefaultQuota applies to users without a quota_rule of their own.
	DefaultQuota Quota
	// Logger may be nil: nothing is logged then.
	Logger *slog.Logger
	// ReloadCheckInterval is how often at most Lookup and Authenticate stat
	// the file to see whether it changed; 0 means one second.
	ReloadCheckInterval time.Duration
}

// PasswdFile is the embedded default user source: a Dovecot-format
// passwd-file,
//
//	user:password:uid:gid:gecos:home:shell:extra fields
//
// Fields after the password may be missing; extra fields are space-separated
// key=value pairs (see parseExtra for those understood). Lines starting with
// '#' and blank lines are ignored.
//
// A user field containing '@' matches that normalised address exactly. One
// without '@' matches the bare local part and local@DefaultDomain, or, when
// there is no default domain, that local part in any domain: that is what a
// single-domain Postfix mailbox_transport setup needs, where Postfix passes
// user@myhostname. Exact entries win over bare ones. User fields are not
// split at the recipient delimiter, and a looked-up address is tried unsplit
// before its detail is removed (as Postfix does), so with delimiter "-" an
// entry "mary-ann" still receives mary-ann@ mail.
//
// Lookup of a disabled user returns (nil, Disabled error): the caller gets
// nothing it could deliver to by mistake.
//
// The file is re-read when its mtime, size or inode changes (checked at most
// every ReloadCheckInterval, on use); a failed re-read keeps the old table.
// A changed file is only taken once it has settled (see settled): an editor
// or "cat > users" rewrites it in place, and a read in the middle would see
// half of it. Until then the previous version is served, and an address it
// does not know is a temporary failure, not 5.1.1: the user may be on the
// half not written yet.
// Lookups read an immutable table through an atomic pointer, so a PasswdFile
// is safe for concurrent use and a reload never blocks a lookup.
type PasswdFile struct {
	path        string
	mailboxRule mailboxRule // where Maildirs are, what confines them
	norm        Normalizer
	defDomain   string // norm.DefaultDomain, normalised
	defQuota    Quota
	log         *slog.Logger
	interval    time.Duration

	tab       atomic.Pointer[passwdTable]
	nextCheck atomic.Int64 // UnixNano before which no stat is done
	closed    atomic.Bool

	mu      sync.Mutex // serialises reloads and guards lastErr, seen, seenAt
	lastErr string     // last reload failure, so it is logged once, not every interval
	// changing is set while the file differs from the table served and
	// has not settled yet.
	changing atomic.Bool
	// seen is the changed version last observed and seenAt when (on our
	// clock) it was first observed, for settled.
	seen   os.FileInfo
	seenAt time.Time
	now    func() time.Time // time.Now; tests move it
}

// reloadSettle is how long a changed passwd-file must have been left
// alone before it is read: longer than an editor or a shell redirection
// takes to write a user file, short enough that a new user can receive
// mail within seconds.
const reloadSettle = time.Second

var _ DB = (*PasswdFile)(nil)

// passwdTable is one parsed version of the file. It is never modified after
// it is published, which is what makes lock-free lookups safe.
type passwdTable struct {
	info     os.FileInfo
	exact    map[string]*passwdEntry // "local@domain"
	bare     map[string]*passwdEntry // "local"
	problems []error
	// dummy is a stored hash that Authenticate verifies against for an
	// unknown user, so the time taken does not reveal whether it exists.
	// It is taken from the file, of the scheme most entries use, so that
	// it costs what a real one costs.
	dummy string
}

// passwdEntry is one user line.
type passwdEntry struct {
	name     string // normalised user field
	domain   string // for an exact entry; "" for a bare one
	line     int
	password string
	uid, gid int
	home     string // raw home field ("" = none)
	mail     string // path from userdb_mail, "maildir:" and options stripped
	quota    Quota
	disabled bool
	noLogin  bool
}

// fallbackDummyHash is used when the file holds no hash at all: the
// SHA512-CRYPT of a random password nobody knows.
const fallbackDummyHash = "{SHA512-CRYPT}$6$d898b1bee5db351e$oy5.Obe62O1u9qm0Qcx7O3uoBtkY3JIeowEN2NJpJedvR3wIyRgkc7u2B926.Rf7.CY6XLJvioiwUA8wy/1hp1"

// Reasons given to the peer. They name no path and no user.
const (
	reasonNoUser      = "no such user"
	reasonAuthFailed  = "authentication failed"
	reasonDisabled    = "account disabled"
	reasonNoLogin     = "login disabled"
	reasonOutsideRoot = "mailbox path outside the mail root"
)

// OpenPasswdFile reads the file and returns a source serving it. It fails if
// the options are invalid or the file cannot be read; malformed lines do
// not make it fail (see Problems).
func OpenPasswdFile(opts PasswdFileOptions) (*PasswdFile, error) {
	const op = "open passwd-file"
	if opts.Path == "" {
		return nil, failure.Perm(op, "no passwd-file path configured", nil)
	}
	rule, err := newMailboxRule(op, opts.MailRoot, opts.MaildirName, opts.Normalizer, opts.Volumes)
	if err != nil {
		return nil, err
	}
	if opts.ReloadCheckInterval < 0 {
		return nil, failure.Perm(op, "reload check interval must not be negative", nil)
	}
	p := &PasswdFile{
		path:        opts.Path,
		mailboxRule: rule,
		norm:        opts.Normalizer,
		defQuota:    opts.DefaultQuota,
		log:         opts.Logger,
		interval:    opts.ReloadCheckInterval,
		now:         time.Now,
	}
	if opts.Normalizer.DefaultDomain != "" {
		p.defDomain, _ = normalizeDomain(opts.Normalizer.DefaultDomain) // validated above
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.interval == 0 {
		p.interval = time.Second
	}
	t, err := p.load()
	for try := 0; errors.Is(err, errUnsettled) && try < 3; try++ {
		t, err = p.load()
	}
	if err != nil {
		return nil, failure.Temp(op, "user database unavailable", err)
	}
	// At start there is no older version to serve: the file is used as
	// read (load checked that nothing changed while it read), and a write
	// still under way shows as a change at the next check.
	p.tab.Store(t)
	p.nextCheck.Store(time.Now().Add(p.interval).UnixNano())
	p.log.Info("passwd-file loaded", "file", p.path, "users", t.users(), "problems", len(t.problems))
	return p, nil
}

// Problems returns the malformed lines of the last successful load, each
// naming the file and line ("users:7: uid field "x" is not a number").
func (p *PasswdFile) Problems() []error {
	return append([]error(nil), p.tab.Load().problems...)
}

// Users returns the number of users in the current table.
func (p *PasswdFile) Users() int { return p.tab.Load().users() }

func (t *passwdTable) users() int { return len(t.exact) + len(t.bare) }

// Close stops the source; later calls fail with a Temporary error. There is
// nothing to release: the file is only open while it is read.
func (p *PasswdFile) Close() error {
	p.closed.Store(true)
	return nil
}

// Lookup finds the user for a recipient address. Unknown: NotFound;
// disabled: (nil, Disabled); a mailbox outside the mail root: Permanent.
func (p *PasswdFile) Lookup(ctx context.Context, address string) (*User, error) {
	const op = "passwd-file lookup"
	if err := p.usable(ctx, op); err != nil {
		return nil, err
	}
	a, full, err := p.norm.parse(address, true, true)
	if err != nil {
		return nil, err
	}
	p.maybeReload()
	e, local := p.tab.Load().match(a, full, p.defDomain)
	if e == nil {
		if p.changing.Load() {
			// The new version may have this user on a part not
			// written yet: let the sender's MTA try again.
			return nil, failure.Temp(op, "user database being updated", nil)
		}
		return nil, failure.New(failure.NotFound, op, reasonNoUser, nil)
	}
	if e.disabled {
		return nil, failure.New(failure.Disabled, op, reasonDisabled, nil)
	}
	return p.user(op, e, Address{Local: local, Domain: a.Domain})
}

// Authenticate checks a login name and password. An unknown name and a
// wrong password give the same NotFound error after the same amount of
// work. The disabled flags are only revealed to someone who knows the
// password, so they cannot be used to probe which accounts exist.
func (p *PasswdFile) Authenticate(ctx context.Context, name, password string) (*User, error) {
	const op = "passwd-file authenticate"
	if err := p.usable(ctx, op); err != nil {
		return nil, err
	}
	a, full, err := p.norm.parse(name, true, true)
	if err != nil {
		return nil, err
	}
	authFailed := failure.New(failure.NotFound, op, reasonAuthFailed, nil)
	if password == "" {
		// Never a valid password: an empty stored field must not match
		// an empty input, and Dovecot's "nopassword" is not honoured.
		return nil, authFailed
	}
	p.maybeReload()
	t := p.tab.Load()
	e, local := t.match(a, full, p.defDomain)
	stored := t.dummy
	if e != nil && e.password != "" {
		stored = e.password
	}
	ok, verr := VerifyPassword(stored, password)
	if e == nil || e.password == "" || !ok {
		if e != nil && verr != nil {
			// verr names the scheme at most, never the hash.
			p.log.Warn("passwd-file: stored password unusable", "file", p.path, "line", e.line, "user", e.name, "error", verr)
		}
		return nil, authFailed
	}
	if e.disabled {
		return nil, failure.New(failure.Disabled, op, reasonDisabled, nil)
	}
	if e.noLogin {
		return nil, failure.New(failure.Disabled, op, reasonNoLogin, nil)
	}
	return p.user(op, e, Address{Local: local, Domain: a.Domain})
}

func (p *PasswdFile) usable(ctx context.Context, op string) error {
	if p.closed.Load() {
		return failure.Temp(op, "user database closed", nil)
	}
	if err := ctx.Err(); err != nil {
		return failure.Temp(op, "cancelled", err)
	}
	return nil
}

// match finds the entry for a, trying the unsplit local part (full) before
// the one with the detail removed, and exact entries before bare ones. It
// returns the entry and the local part that matched.
func (t *passwdTable) match(a Address, full, defaultDomain string) (*passwdEntry, string) {
	locals := []string{a.Local}
	if full != a.Local {
		locals = []string{full, a.Local}
	}
	if a.Domain != "" {
		for _, l := range locals {
			if e := t.exact[l+"@"+a.Domain]; e != nil {
				return e, l
			}
		}
	}
	if a.Domain == "" || defaultDomain == "" || a.Domain == defaultDomain {
		for _, l := range locals {
			if e := t.bare[l]; e != nil {
				return e, l
			}
		}
	}
	return nil, ""
}

// user builds the User for e, resolving and confining its mailbox.
func (p *PasswdFile) user(op string, e *passwdEntry, addr Address) (*User, error) {
	a := account{name: e.name, domain: e.domain, uid: e.uid, gid: e.gid, home: e.home, mail: e.mail, quota: e.quota}
	return p.mailboxRule.user(op, &a, addr, p.log, "passwd-file", "file", p.path, "line", e.line)
}

// maybeReload stats the file at most once per interval, across all
// goroutines: the one that wins the compare-and-swap does the check (and a
// reload if needed) inline; the others carry on with the current table.
func (p *PasswdFile) maybeReload() {
	now := time.Now().UnixNano()
	next := p.nextCheck.Load()
	if now < next {
		return
	}
	if !p.nextCheck.CompareAndSwap(next, now+int64(p.interval)) {
		return
	}
	p.reload()
}

// reload re-reads the file if it changed. On failure the old table stays.
func (p *PasswdFile) reload() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fi, err := os.Stat(p.path)
	if err != nil {
		p.reloadFailed(err)
		return
	}
	old := p.tab.Load()
	if sameVersion(old.info, fi) {
		p.changing.Store(false)
		p.reloadOK()
		return
	}
	if !p.settled(fi) {
		p.changing.Store(true)
		return
	}
	t, err := p.load()
	if errors.Is(err, errUnsettled) {
		p.changing.Store(true)
		return
	}
	if err != nil {
		p.changing.Store(false)
		p.reloadFailed(err)
		return
	}
	p.tab.Store(t)
	p.changing.Store(false)
	p.seen = nil
	p.reloadOK()
	p.log.Info("passwd-file reloaded", "file", p.path, "users", t.users(), "problems", len(t.problems))
}

func (p *PasswdFile) reloadFailed(err error) {
	if msg := err.Error(); msg != p.lastErr {
		p.lastErr = msg
		p.log.Error("passwd-file: reload failed, keeping the previous users", "file", p.path, "error", err)
	}
}

func (p *PasswdFile) reloadOK() {
	if p.lastErr != "" {
		p.lastErr = ""
		p.log.Info("passwd-file readable again", "file", p.path)
	}
}

// settled judges whether the changed file fi has stopped changing: its
// last change (the later of mtime and ctime; ctime cannot be set back, so
// "cp -p" or touch -d do not fool it) is reloadSettle old on our clock, or,
// for a file server whose clock is ahead of ours, we have seen this very
// version (inode, size, mtime, ctime) unchanged for reloadSettle on our
// clock. load then checks that nothing changed while it read.
func (p *PasswdFile) settled(fi os.FileInfo) bool {
	now := p.now()
	if now.Sub(lastChange(fi)) >= reloadSettle {
		return true
	}
	if p.seen == nil || !sameVersion(p.seen, fi) || !ctimeOf(p.seen).Equal(ctimeOf(fi)) {
		p.seen, p.seenAt = fi, now
		return false
	}
	return now.Sub(p.seenAt) >= reloadSettle
}

func lastChange(fi os.FileInfo) time.Time {
	if c := ctimeOf(fi); c.After(fi.ModTime()) {
		return c
	}
	return fi.ModTime()
}

func ctimeOf(fi os.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return fi.ModTime()
}

// errUnsettled is load's answer when the file changed while it was read.
var errUnsettled = errors.New("passwd-file changed while it was read")

// sameVersion reports whether b is the same file, unchanged, as a: same
// inode (a rename-over by an editor or a config tool), same size and mtime
// (an in-place rewrite).
func sameVersion(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// load reads and parses the file. The version recorded is the one of the
// open descriptor, so a write racing with the read shows up as a change at
// the next check and is read again.
func (p *PasswdFile) load() (*passwdTable, error) {
	f, err := os.Open(p.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory", p.path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	// A writer still at work shows in the size, mtime or ctime of the
	// descriptor after the read, or in a read that did not get the size.
	after, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !sameVersion(fi, after) || !ctimeOf(fi).Equal(ctimeOf(after)) || int64(len(data)) != after.Size() {
		return nil, errUnsettled
	}
	t := &passwdTable{
		info:  fi,
		exact: make(map[string]*passwdEntry),
		bare:  make(map[string]*passwdEntry),
	}
	for n := 1; len(data) > 0; n++ {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		line = bytes.TrimSuffix(line, []byte{'\r'})
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		if msg := p.addLine(t, n, string(line)); msg != "" {
			le := &lineError{file: p.path, line: n, msg: msg}
			t.problems = append(t.problems, le)
			p.log.Warn("passwd-file: skipping malformed line", "file", p.path, "line", n, "problem", msg)
		}
	}
	t.dummy = commonestHash(t)
	return t, nil
}

// commonestHash picks the dummy hash of a table: the first (by line)
// stored password of the scheme most entries use, or fallbackDummyHash
// when none has one. The first entry alone could be an odd one out (a
// {PLAIN} test account above thousands of SHA512-CRYPT users), and
// unknown names would then cost less than a wrong password.
func commonestHash(t *passwdTable) string {
	type use struct {
		count, line int
		hash        string
	}
	schemes := map[string]*use{}
	for _, m := range []map[string]*passwdEntry{t.exact, t.bare} {
		for _, e := range m {
			if e.password == "" {
				continue
			}
			scheme, _ := splitScheme(e.password)
			u := schemes[scheme]
			if u == nil {
				u = &use{line: e.line, hash: e.password}
				schemes[scheme] = u
			}
			u.count++
			if e.line < u.line {
				u.line, u.hash = e.line, e.password
			}
		}
	}
	var best *use
	for _, u := range schemes {
		// Ties go to the scheme seen first, so the choice does not
		// depend on map order.
		if best == nil || u.count > best.count || (u.count == best.count && u.line < best.line) {
			best = u
		}
	}
	if best == nil {
		return fallbackDummyHash
	}
	return best.hash
}

// lineError is one malformed line: "file:line: problem".
type lineError struct {
	file string
	line int
	msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.msg) }

// addLine parses one line into t. It returns "" or what is wrong with the
// line; that text goes to the log, so it must never contain the password
// field (see showField).
func (p *PasswdFile) addLine(t *passwdTable, n int, line string) string {
	// The extra fields are the rest of the line: they contain colons of
	// their own (userdb_mail=maildir:~/Maildir, quota_rule=*:storage=1G).
	f := strings.SplitN(line, ":", 8)
	if len(f) < 2 {
		return "line has no password field"
	}
	field := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	if f[0] == "" {
		return "empty user name"
	}
	// User names are taken literally: not split at the delimiter, no
	// default domain added. That keeps "mary-ann" one user, and keeps a
	// bare entry bare so it can match in any domain.
	a, _, err := p.norm.parse(f[0], false, false)
	if err != nil {
		return "user name refused: " + failure.As(err).Reason
	}
	e := &passwdEntry{
		name:     a.String(),
		domain:   a.Domain,
		line:     n,
		password: f[1],
		home:     field(5),
		quota:    p.defQuota,
	}
	if e.uid, err = parseID(field(2)); err != nil {
		return fmt.Sprintf("uid field %s is not a number", showField(field(2)))
	}
	if e.gid, err = parseID(field(3)); err != nil {
		return fmt.Sprintf("gid field %s is not a number", showField(field(3)))
	}
	if msg := e.parseExtra(field(7)); msg != "" {
		return msg
	}

	m := t.bare
	if a.Domain != "" {
		m = t.exact
	}
	if prev := m[e.name]; prev != nil {
		return fmt.Sprintf("duplicate user %q (first on line %d)", e.name, prev.line)
	}
	m[e.name] = e
	return ""
}

// showField quotes a field value for a problem report, unless it could be
// a password that landed in the wrong column (a missing or extra colon
// shifts every field): anything with a scheme or crypt prefix, or long.
func showField(s string) string {
	if len(s) > 24 || strings.ContainsAny(s, "{}$") {
		return "(value not shown)"
	}
	return strconv.Quote(s)
}

// parseID parses a uid or gid: a number, or -1 for an empty field.
// (uid_t)-1 itself is refused because chown treats it as "no change".
func parseID(s string) (int, error) {
	if s == "" {
		return -1, nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == math.MaxUint32 {
		return 0, errors.New("not a number")
	}
	return int(v), nil
}

// isQuotaRuleKey matches quota_rule, quota_rule2, quota_rule3, ...
func isQuotaRuleKey(k string) bool {
	n, ok := strings.CutPrefix(k, "quota_rule")
	return ok && strings.Trim(n, "0123456789") == ""
}

// parseExtra reads the extra fields. Understood, with or without Dovecot's
// "userdb_" prefix:
//
//	mail=maildir:PATH[:OPT=...]   mailbox override; "~/" is home
//	home=, uid=, gid=             override the columns, as in Dovecot
//	quota_rule=*:storage=1G       also bytes=, messages=; quota_rule2, ...
//	disabled=yes|y|true|1         no delivery, no login
//	nologin                       no login (delivery continues)
//
// Everything else is ignored: Dovecot has many fields that do not concern
// delivery (and "nopassword" is deliberately not honoured).
func (e *passwdEntry) parseExtra(extra string) string {
	for _, kv := range strings.Fields(extra) {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" {
			return "extra field with an empty name"
		}
		name := strings.TrimPrefix(k, "userdb_")
		var err error
		switch {
		case name == "mail":
			e.mail, err = parseMailLocation(v)
		case name == "home":
			e.home = v
		case name == "uid", name == "gid":
			id, perr := parseID(v)
			if perr != nil || v == "" {
				return fmt.Sprintf("extra field %s value %s is not a number", k, showField(v))
			}
			if name == "uid" {
				e.uid = id
			} else {
				e.gid = id
			}
		case isQuotaRuleKey(name):
			err = parseQuotaRule(v, &e.quota)
		case name == "disabled":
			e.disabled, err = parseBool(v)
		case k == "nologin":
			// A passdb field, hence no userdb_ form. Dovecot treats its
			// presence as set.
			e.noLogin = true
		}
		if err != nil {
			return fmt.Sprintf("extra field %s: %v", k, err)
		}
	}
	return ""
}

// parseBool reads a yes/no field; a bare flag (no '=') counts as yes.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "", "yes", "y", "true", "1":
		return true, nil
	case "no", "n", "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("value %s is not yes or no", showField(v))
}

// parseMailLocation extracts the path from a Dovecot mail location:
// "maildir:PATH" with optional ":KEY=VALUE" options, which are dropped
// (they concern Dovecot's indexes and layout, not where new mail goes).
// Other formats are refused: we only write Maildir. So are %-variables,
// which would otherwise become literal directory names.
func parseMailLocation(v string) (string, error) {
	format, rest, ok := strings.Cut(v, ":")
	if !ok || !strings.EqualFold(format, "maildir") {
		return "", errors.New("mail location is not maildir:PATH")
	}
	path, _, _ := strings.Cut(rest, ":")
	if path == "" {
		return "", errors.New("mail location has no path")
	}
	if strings.Contains(path, "%") {
		return "", errors.New("mail location uses %-variables, which are not supported")
	}
	return path, nil
}

// parseQuotaRule applies a Dovecot quota rule to q. Only rules for the whole
// mailbox ("*", or "?" which Dovecot uses for a default that does not
// override) matter to a Maildir++ quota; rules for single folders are
// ignored. Units follow Dovecot: storage= is in kilobytes unless it has a
// B, K, M, G or T suffix, bytes= is in bytes; messages= is a plain count.
// Relative limits (+, -, %) need a base rule we do not model: refused.
func parseQuotaRule(v string, q *Quota) error {
	box, limits, ok := strings.Cut(v, ":")
	if !ok || box == "" {
		return errors.New("quota rule is not MAILBOX:LIMIT=VALUE")
	}
	if box != "*" && box != "?" {
		return nil
	}
	for lim := range strings.SplitSeq(limits, ":") {
		key, val, _ := strings.Cut(lim, "=")
		if strings.HasPrefix(val, "+") || strings.HasPrefix(val, "-") || strings.HasSuffix(val, "%") {
			return errors.New("relative quota limits (+, -, %) are not supported")
		}
		var err error
		switch key {
		case "storage":
			q.Bytes, err = parseSize(val, 1024)
		case "bytes":
			q.Bytes, err = parseSize(val, 1)
		case "messages":
			var n uint64
			n, err = strconv.ParseUint(val, 10, 63)
			q.Messages = int64(n)
		default:
			return fmt.Errorf("unknown quota limit %s", showField(key))
		}
		if err != nil {
			return fmt.Errorf("quota limit %s value %s is not a size", key, showField(val))
		}
	}
	return nil
}

// parseSize reads a number with an optional B/K/M/G/T suffix (powers of
// 1024, case-insensitive); unit applies when there is no suffix.
func parseSize(s string, unit int64) (int64, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	mult := unit
	suffix := true
	switch s[len(s)-1] {
	case 'b', 'B':
		mult = 1
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	default:
		suffix = false
	}
	if suffix {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 63)
	if err != nil {
		return 0, err
	}
	if n > uint64(math.MaxInt64/mult) {
		return 0, errors.New("too large")
	}
	return int64(n) * mult, nil
}
