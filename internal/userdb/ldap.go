package userdb

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// LDAPAttributes names the directory attributes nfsdrop reads. An empty name
// means the directory has no such attribute (Address excepted: it is
// required).
type LDAPAttributes struct {
	// Address holds the primary address; its first value becomes
	// User.Name and, without a mailbox attribute, names the Maildir.
	Address string
	// Aliases holds further addresses. Matching them is the filter's job;
	// the values are only reported in the debug log. An "smtp:" prefix (as
	// in Active Directory's proxyAddresses) is removed.
	Aliases string
	// Mailbox holds the Maildir path, absolute or relative to the mail
	// root, optionally written "maildir:PATH" as Dovecot does.
	Mailbox string
	// QuotaStorage (bytes, with an optional K/M/G/T suffix) and
	// QuotaMessages override the default quota; 0 means unlimited.
	QuotaStorage, QuotaMessages string
	// UID and GID hold the numeric owner of the Maildir.
	UID, GID string
	// Enabled, when set, holds the flag that enables an account: an entry
	// whose attribute has values none of which is LDAPOptions.EnabledValue
	// is disabled. An entry without the attribute is enabled.
	Enabled string
	// Password holds the password hash for AuthMethod "compare".
	Password string
}

// LDAPOptions configures an LDAP user source. Zero durations and sizes have
// the meanings given with each field.
type LDAPOptions struct {
	// URIs are tried in order: ldap://host[:port] or ldaps://host[:port].
	URIs []string
	// StartTLS upgrades ldap:// connections with the StartTLS operation.
	StartTLS bool
	// CAFile is a PEM file of the CAs that sign the servers' certificates;
	// "" means the system's roots.
	CAFile string
	// BindDN and BindPasswordFile are the service account used for
	// searches; an empty BindDN means anonymous searches. The file is read
	// at Open and again for every new connection (so a rotated password is
	// picked up); one trailing newline is removed.
	BindDN, BindPasswordFile string
	// BaseDN and Scope ("base", "one" or "sub"; "" = "sub") bound searches.
	BaseDN, Scope string
	// UserFilter finds the user of a recipient address; AuthFilter (""
	// means UserFilter) the user of a POP3 login name. In both, %s is the
	// whole address, %u its local part, %d its domain and %% a percent
	// sign; every substituted value is escaped (RFC 4515).
	UserFilter, AuthFilter string
	// AuthMethod is "bind" (bind as the user's DN with the password; the
	// default) or "compare" (read Attrs.Password with the service account
	// and verify it here, with the schemes of VerifyPassword).
	AuthMethod string
	Attrs      LDAPAttributes
	// EnabledValue is the value of Attrs.Enabled that enables an account,
	// compared without regard to case. Default "TRUE".
	EnabledValue string

	// Timeout bounds every network step: connecting (with TLS and the
	// service bind), each search, each user bind. Default 5s.
	Timeout time.Duration
	// PoolSize is the largest number of connections for searches, and
	// again for user binds. Default 4.
	PoolSize int
	// RetryBackoff is the longest a failed server is left alone before it
	// is tried again; back-off starts at one second (or RetryBackoff if
	// shorter) and doubles. Default 30s.
	RetryBackoff time.Duration

	// CacheSize is the largest number of cached lookups; 0 turns the
	// cache (and the outage fallback) off.
	CacheSize int
	// CacheTTL is how long a found user is served from the cache;
	// NegativeCacheTTL how long an unknown address is (0: not cached).
	CacheTTL, NegativeCacheTTL time.Duration
	// CacheMaxStale is how long after CacheTTL a cached user may still be
	// used by Lookup while the directory is unavailable (0: never).
	CacheMaxStale time.Duration
	// AuthCacheTTL is how long a successful login is remembered, by a
	// keyed hash of the password, never the password (0: not cached).
	AuthCacheTTL time.Duration

	// MailRoot is absolute; every mailbox must lie under it.
	MailRoot string
	// MaildirName is the Maildir below MAILROOT/domain/local for entries
	// without a mailbox attribute ("" = that directory itself).
	MaildirName string
	// Normalizer normalises looked-up addresses and login names, and the
	// primary addresses read from the directory.
	Normalizer   Normalizer
	DefaultQuota Quota
	// Logger may be nil: nothing is logged then.
	Logger *slog.Logger
}

// LDAP is a user source backed by an LDAP directory (OpenLDAP, Active
// Directory, ...).
//
// Lookup searches with UserFilter, first for the address as given and then,
// when it carries a recipient-delimiter detail, without it (as the
// passwd-file and Postfix do). No entry is NotFound; more than one is a
// configuration error, logged, and Temporary; a disabled entry is Disabled;
// an entry that cannot be used (no primary address, a mailbox outside the
// mail root, malformed numbers) is Permanent, logged. Mailbox paths are
// resolved and confined exactly as for the passwd-file, on every call.
//
// Searches run on a small pool of connections bound as the service account;
// user binds (AuthMethod "bind") run on a separate pool, so a connection
// used for searches is never bound as a user. Every network step has a
// deadline; a server that fails or times out is skipped for a back-off
// period and the next URI is tried.
//
// Lookups are cached (positive and negative, each with its own TTL). While
// the directory is unavailable, Lookup may answer from an expired positive
// entry up to CacheMaxStale old, and logs a warning when it does.
// Authenticate never uses that cache: it asks the directory every time,
// unless AuthCacheTTL is set, in which case a login that succeeded is
// accepted again, until the TTL ends, for the same keyed password hash.
type LDAP struct {
	servers []*ldapServer
	srvMu   sync.Mutex // guards the failure state of servers

	search *ldapPool // bound as the service account
	auth   *ldapPool // for user binds only

	userTmpl, authTmpl filterTemplate
	userAttrs          []string
	authAttrs          []string
	baseDN             string
	scope              int
	compare            bool
	attrs              LDAPAttributes
	enabledValue       string

	startTLS   bool
	roots      *x509.CertPool
	bindDN     string
	bindPWFile string

	timeout    time.Duration
	backoffMax time.Duration

	cache     *ldapCache
	authCache *ldapAuthCache

	norm Normalizer
	log  *slog.Logger
	// paths builds Users: it is a PasswdFile used only for its mailbox
	// path and confinement rules, so that both sources apply the same ones.
	paths *PasswdFile

	closed atomic.Bool
}

var _ DB = (*LDAP)(nil)

// Defaults of LDAPOptions.
const (
	ldapDefaultTimeout      = 5 * time.Second
	ldapDefaultPoolSize     = 4
	ldapDefaultRetryBackoff = 30 * time.Second
	ldapDefaultEnabledValue = "TRUE"
	ldapBackoffStart        = time.Second
	// ldapMaxConnAge is when an idle connection is replaced: it returns
	// traffic to the first URI after a failover and stays below the idle
	// timeouts of servers (Active Directory's MaxConnIdleTime is 15 min).
	ldapMaxConnAge = 5 * time.Minute
)

// Reasons given to the peer for directory trouble.
const (
	reasonLDAPDown      = "user directory unavailable"
	reasonLDAPAmbiguous = "user directory misconfigured"
	reasonBadEntry      = "user entry unusable"
)

// OpenLDAP checks the options and returns a source. It does not connect:
// the directory may be down when nfsdrop starts, and the first lookup
// connects.
func OpenLDAP(opts LDAPOptions) (*LDAP, error) {
	const op = "open ldap"
	bad := func(format string, args ...any) (*LDAP, error) {
		return nil, failure.Perm(op, fmt.Sprintf(format, args...), nil)
	}
	if len(opts.URIs) == 0 {
		return bad("no LDAP URI configured")
	}
	d := &LDAP{
		baseDN:       opts.BaseDN,
		attrs:        opts.Attrs,
		enabledValue: opts.EnabledValue,
		startTLS:     opts.StartTLS,
		bindDN:       opts.BindDN,
		bindPWFile:   opts.BindPasswordFile,
		timeout:      opts.Timeout,
		backoffMax:   opts.RetryBackoff,
		norm:         opts.Normalizer,
		log:          opts.Logger,
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	for _, u := range opts.URIs {
		s, err := parseLDAPURI(u)
		if err != nil {
			return bad("%v", err)
		}
		d.servers = append(d.servers, s)
	}
	if opts.BaseDN == "" {
		return bad("no base DN configured")
	}
	if _, err := ldap.ParseDN(opts.BaseDN); err != nil {
		return bad("base DN %q does not parse: %v", opts.BaseDN, err)
	}
	switch opts.Scope {
	case "", "sub":
		d.scope = ldap.ScopeWholeSubtree
	case "one":
		d.scope = ldap.ScopeSingleLevel
	case "base":
		d.scope = ldap.ScopeBaseObject
	default:
		return bad("scope must be \"base\", \"one\" or \"sub\", not %q", opts.Scope)
	}
	var err error
	if d.userTmpl, err = parseFilterTemplate(opts.UserFilter); err != nil {
		return bad("user filter: %v", err)
	}
	d.authTmpl = d.userTmpl
	if opts.AuthFilter != "" {
		if d.authTmpl, err = parseFilterTemplate(opts.AuthFilter); err != nil {
			return bad("auth filter: %v", err)
		}
	}
	switch opts.AuthMethod {
	case "", "bind":
	case "compare":
		d.compare = true
		if opts.Attrs.Password == "" {
			return bad("auth method \"compare\" needs a password attribute")
		}
	default:
		return bad("auth method must be \"bind\" or \"compare\", not %q", opts.AuthMethod)
	}
	if opts.Attrs.Address == "" {
		return bad("no address attribute configured")
	}
	if d.enabledValue == "" {
		d.enabledValue = ldapDefaultEnabledValue
	}
	d.userAttrs = attrList(opts.Attrs.Address, opts.Attrs.Aliases, opts.Attrs.Mailbox, opts.Attrs.QuotaStorage,
		opts.Attrs.QuotaMessages, opts.Attrs.UID, opts.Attrs.GID, opts.Attrs.Enabled)
	d.authAttrs = d.userAttrs
	if d.compare {
		d.authAttrs = attrList(append(append([]string(nil), d.userAttrs...), opts.Attrs.Password)...)
	}
	if opts.Timeout < 0 || opts.RetryBackoff < 0 || opts.PoolSize < 0 || opts.CacheSize < 0 ||
		opts.CacheTTL < 0 || opts.NegativeCacheTTL < 0 || opts.CacheMaxStale < 0 || opts.AuthCacheTTL < 0 {
		return bad("durations and sizes must not be negative")
	}
	if d.timeout == 0 {
		d.timeout = ldapDefaultTimeout
	}
	if d.backoffMax == 0 {
		d.backoffMax = ldapDefaultRetryBackoff
	}
	pool := opts.PoolSize
	if pool == 0 {
		pool = ldapDefaultPoolSize
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, failure.Perm(op, "cannot read the CA file", err)
		}
		d.roots = x509.NewCertPool()
		if !d.roots.AppendCertsFromPEM(pem) {
			return bad("CA file %s holds no PEM certificate", opts.CAFile)
		}
	}
	if d.bindDN != "" {
		if _, err := ldap.ParseDN(d.bindDN); err != nil {
			return bad("bind DN %q does not parse: %v", d.bindDN, err)
		}
		if d.bindPWFile == "" {
			return bad("a bind DN needs a bind password file")
		}
		if _, err := d.bindPassword(); err != nil {
			return nil, failure.Perm(op, "cannot read the bind password file", err)
		}
	}

	// The mailbox rules are the passwd-file's (see LDAP.paths); so are the
	// checks of the mail root, the Maildir name and the Normalizer.
	paths, err := OpenPasswdFile(PasswdFileOptions{Path: os.DevNull, MailRoot: opts.MailRoot, MaildirName: opts.MaildirName,
		Normalizer: opts.Normalizer, DefaultQuota: opts.DefaultQuota})
	if err != nil {
		fe := failure.As(err)
		return nil, failure.New(fe.Kind, op, fe.Reason, fe.Err)
	}
	paths.log = slog.New(ldapPathLog{d.log.Handler()})
	d.paths = paths

	d.search = &ldapPool{d: d, bind: true, slots: make(chan struct{}, pool)}
	d.auth = &ldapPool{d: d, bind: false, slots: make(chan struct{}, pool)}
	if opts.CacheSize > 0 {
		d.cache = &ldapCache{size: opts.CacheSize, ttl: opts.CacheTTL, negTTL: opts.NegativeCacheTTL,
			maxStale: opts.CacheMaxStale, m: make(map[string]ldapCacheEntry)}
	}
	if opts.AuthCacheTTL > 0 {
		key := make([]byte, 32)
		rand.Read(key)
		size := opts.CacheSize
		if size == 0 {
			size = 1000
		}
		d.authCache = &ldapAuthCache{key: key, ttl: opts.AuthCacheTTL, size: size, m: make(map[string]ldapAuthEntry)}
	}
	method := "bind"
	if d.compare {
		method = "compare"
	}
	d.log.Info("ldap user source configured", "uris", strings.Join(opts.URIs, " "), "base", d.baseDN,
		"auth", method, "cache", opts.CacheSize)
	return d, nil
}

// Close closes the connections; later calls fail with a Temporary error.
func (d *LDAP) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.search.close()
	d.auth.close()
	return d.paths.Close()
}

func (d *LDAP) usable(ctx context.Context, op string) error {
	if d.closed.Load() {
		return failure.Temp(op, "user database closed", nil)
	}
	if err := ctx.Err(); err != nil {
		return failure.Temp(op, "cancelled", err)
	}
	return nil
}

// locals lists the local parts to try for a parsed address: the unsplit one
// first, then the one without the detail.
func locals(a Address, full string) []string {
	if full != a.Local {
		return []string{full, a.Local}
	}
	return []string{a.Local}
}

func joinAddr(local, domain string) string {
	if domain == "" {
		return local
	}
	return local + "@" + domain
}

// Lookup finds the user for a recipient address.
func (d *LDAP) Lookup(ctx context.Context, address string) (*User, error) {
	const op = "ldap lookup"
	if err := d.usable(ctx, op); err != nil {
		return nil, err
	}
	a, full, err := d.norm.parse(address, true, true)
	if err != nil {
		return nil, err
	}
	var outage error // the directory failed for an earlier candidate
	for _, local := range locals(a, full) {
		addr := joinAddr(local, a.Domain)
		now := time.Now()
		ce, fresh, cached := d.cache.get(addr, now)
		if cached && fresh {
			if ce.e == nil {
				continue
			}
			return d.user(op, ce.e, Address{Local: local, Domain: a.Domain})
		}
		if outage == nil {
			e, err := d.find(ctx, op, d.userTmpl, local, a.Domain, d.userAttrs)
			if err == nil {
				d.cache.put(addr, e, now)
				if e == nil {
					continue
				}
				return d.user(op, e, Address{Local: local, Domain: a.Domain})
			}
			if !isOutage(err) {
				return nil, err
			}
			outage = err
		}
		// The directory is unavailable: an expired entry may do.
		if cached && ce.e != nil && d.cache.usableStale(ce, now) {
			d.log.Warn("ldap: directory unavailable, using a cached entry past its TTL", "address", addr,
				"dn", ce.e.dn, "age", now.Sub(ce.at).Round(time.Second), "error", outage)
			return d.user(op, ce.e, Address{Local: local, Domain: a.Domain})
		}
		if cached && ce.e == nil && d.cache.usableStale(ce, now) {
			continue // known not to exist not long ago: try the next form
		}
		return nil, outage
	}
	if outage != nil {
		// Never bounce because of a stale negative entry: retry later.
		return nil, outage
	}
	return nil, failure.New(failure.NotFound, op, reasonNoUser, nil)
}

// Authenticate checks a login name and password against the directory.
func (d *LDAP) Authenticate(ctx context.Context, name, password string) (*User, error) {
	const op = "ldap authenticate"
	if err := d.usable(ctx, op); err != nil {
		return nil, err
	}
	a, full, err := d.norm.parse(name, true, true)
	if err != nil {
		return nil, err
	}
	authFailed := failure.New(failure.NotFound, op, reasonAuthFailed, nil)
	if password == "" {
		// Never valid: an LDAP simple bind with an empty password is an
		// unauthenticated bind, which servers accept for any DN.
		return nil, authFailed
	}
	key := joinAddr(full, a.Domain)
	if e, local, ok := d.authCache.get(key, password, time.Now()); ok {
		return d.user(op, e, Address{Local: local, Domain: a.Domain})
	}
	var (
		found *ldapEntry
		local string
	)
	for _, l := range locals(a, full) {
		e, err := d.find(ctx, op, d.authTmpl, l, a.Domain, d.authAttrs)
		if err != nil {
			return nil, err
		}
		if e != nil {
			found, local = e, l
			break
		}
	}
	if found == nil {
		// Cost what a real check costs, so the time taken does not tell
		// whether the name exists.
		if d.compare {
			VerifyPassword(fallbackDummyHash, password)
			return nil, authFailed
		}
		return nil, d.dummyBind(ctx, password, authFailed)
	}
	if d.compare {
		ok := false
		for _, stored := range found.passwords {
			match, verr := VerifyPassword(stored, password)
			if verr != nil {
				d.log.Warn("ldap: stored password unusable", "dn", found.dn, "error", verr)
			}
			if match {
				ok = true
				break
			}
		}
		if len(found.passwords) == 0 {
			d.log.Warn("ldap: entry has no readable password attribute (check the service account's access)",
				"dn", found.dn, "attribute", d.attrs.Password)
		}
		if !ok {
			return nil, authFailed
		}
	} else {
		err := d.withConn(ctx, d.auth, "user bind", func(c *ldap.Conn) error {
			return c.Bind(found.dn, password)
		})
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return nil, authFailed
		}
		if err != nil {
			return nil, err
		}
	}
	// The stored password is not kept: the cache holds the entry and a
	// keyed hash of what the user typed.
	found.passwords = nil
	u, err := d.user(op, found, Address{Local: local, Domain: a.Domain})
	if err == nil {
		d.authCache.put(key, password, local, found, time.Now())
	}
	return u, err
}

// dummyBindRDN names an entry that does not exist below the base DN: the
// target of the bind made for an unknown user.
const dummyBindRDN = "cn=nfsdrop-no-such-user-5f0c2e"

// dummyBind is the user bind of an unknown user: the same request, on the
// same pool, as a wrong password costs, with the password typed, against
// an entry that does not exist (the directory answers invalid
// credentials). Without it a login for an unknown name would skip a round
// trip, and its speed would tell a guesser which names exist. The outcome
// is authFailed whatever the directory answers, or, when it cannot answer,
// the error a real bind would give during that outage. (The directory may
// still answer a bind for a missing entry faster than it checks a real
// entry's hash: the round trips are equal, its own work is its own.)
func (d *LDAP) dummyBind(ctx context.Context, password string, authFailed error) error {
	err := d.withConn(ctx, d.auth, "user bind", func(c *ldap.Conn) error {
		return c.Bind(dummyBindRDN+","+d.baseDN, password)
	})
	if err != nil && isOutage(err) {
		return err
	}
	return authFailed
}

// user builds the User of an entry, or the error it deserves.
func (d *LDAP) user(op string, e *ldapEntry, addr Address) (*User, error) {
	if e.problem != "" {
		d.log.Error("ldap: "+reasonBadEntry, "dn", e.dn, "problem", e.problem)
		return nil, failure.Perm(op, reasonBadEntry, nil)
	}
	if e.pe.disabled {
		return nil, failure.New(failure.Disabled, op, reasonDisabled, nil)
	}
	return d.paths.user(op, &e.pe, addr)
}

// ldapEntry is what nfsdrop keeps of a directory entry; it is never
// modified once cached.
type ldapEntry struct {
	dn string
	// pe carries the fields the passwd-file rules need: name (the
	// normalised primary address), domain, uid, gid, mail (the mailbox
	// attribute), quota and disabled.
	pe passwdEntry
	// problem, when set, says why the entry cannot be used.
	problem string
	// passwords are the stored hashes (compare mode, Authenticate only).
	passwords []string
}

// parseEntry reads the attributes of a search result.
func (d *LDAP) parseEntry(en *ldap.Entry) *ldapEntry {
	e := &ldapEntry{dn: en.DN, pe: passwdEntry{uid: -1, gid: -1, quota: d.paths.defQuota}}
	e.problem = d.fillEntry(e, en)
	if d.compare {
		e.passwords = en.GetEqualFoldAttributeValues(d.attrs.Password)
	}
	return e
}

func (d *LDAP) fillEntry(e *ldapEntry, en *ldap.Entry) string {
	single := func(attr string) (string, string) {
		if attr == "" {
			return "", ""
		}
		vals := en.GetEqualFoldAttributeValues(attr)
		switch len(vals) {
		case 0:
			return "", ""
		case 1:
			return vals[0], ""
		}
		return "", fmt.Sprintf("attribute %s has %d values, expected one", attr, len(vals))
	}
	addrs := en.GetEqualFoldAttributeValues(d.attrs.Address)
	if len(addrs) == 0 {
		return "no " + d.attrs.Address + " attribute (the primary address)"
	}
	a, _, err := d.norm.parse(addrs[0], false, false)
	if err != nil {
		return fmt.Sprintf("primary address %s refused: %s", showField(addrs[0]), failure.As(err).Reason)
	}
	e.pe.name, e.pe.domain = a.String(), a.Domain

	mbox, problem := single(d.attrs.Mailbox)
	if problem != "" {
		return problem
	}
	if mbox != "" {
		if strings.ContainsRune(mbox, 0) {
			return "mailbox path contains a NUL byte"
		}
		if len(mbox) > len("maildir:") && strings.EqualFold(mbox[:len("maildir:")], "maildir:") {
			if mbox, err = parseMailLocation(mbox); err != nil {
				return "mailbox: " + err.Error()
			}
		}
		e.pe.mail = mbox
	}
	for _, id := range []struct {
		attr string
		dst  *int
	}{{d.attrs.UID, &e.pe.uid}, {d.attrs.GID, &e.pe.gid}} {
		v, problem := single(id.attr)
		if problem != "" {
			return problem
		}
		if v == "" {
			continue
		}
		n, err := parseID(v)
		if err != nil {
			return fmt.Sprintf("attribute %s value %s is not a number", id.attr, showField(v))
		}
		*id.dst = n
	}
	if v, problem := single(d.attrs.QuotaStorage); problem != "" {
		return problem
	} else if v != "" {
		n, err := parseSize(v, 1)
		if err != nil {
			return fmt.Sprintf("attribute %s value %s is not a size", d.attrs.QuotaStorage, showField(v))
		}
		e.pe.quota.Bytes = n
	}
	if v, problem := single(d.attrs.QuotaMessages); problem != "" {
		return problem
	} else if v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return fmt.Sprintf("attribute %s value %s is not a number", d.attrs.QuotaMessages, showField(v))
		}
		e.pe.quota.Messages = int64(n)
	}
	if d.attrs.Enabled != "" {
		if vals := en.GetEqualFoldAttributeValues(d.attrs.Enabled); len(vals) > 0 {
			e.pe.disabled = true
			for _, v := range vals {
				if strings.EqualFold(v, d.enabledValue) {
					e.pe.disabled = false
				}
			}
		}
	}
	return ""
}

// find runs one search for local@domain with tmpl and returns the entry,
// nil when there is none, or a *failure.Error: Temporary for an outage
// (isOutage) and for more than one entry (a configuration error, logged).
func (d *LDAP) find(ctx context.Context, op string, tmpl filterTemplate, local, domain string, attrs []string) (*ldapEntry, error) {
	if strings.ContainsRune(local, 0) || strings.ContainsRune(domain, 0) {
		// Escaped, a NUL cannot change the filter, but servers compare
		// such values oddly (OpenLDAP ignores what follows it): it never
		// reaches the directory. Normalised addresses have none anyway.
		return nil, nil
	}
	filter := tmpl.expand(joinAddr(local, domain), local, domain)
	entries, err := d.searchFilter(ctx, filter, attrs)
	if err != nil {
		if le, ok := errors.AsType[*ldapError](err); ok {
			return nil, failure.Temp(op, le.reason(), err)
		}
		return nil, failure.Temp(op, reasonLDAPDown, err)
	}
	switch len(entries) {
	case 0:
		return nil, nil
	case 1:
		e := d.parseEntry(entries[0])
		if d.attrs.Aliases != "" && d.log.Enabled(ctx, slog.LevelDebug) {
			var aliases []string
			for _, v := range entries[0].GetEqualFoldAttributeValues(d.attrs.Aliases) {
				if len(v) > 5 && strings.EqualFold(v[:5], "smtp:") {
					v = v[5:]
				}
				aliases = append(aliases, v)
			}
			d.log.Debug("ldap: found", "address", joinAddr(local, domain), "dn", e.dn, "name", e.pe.name, "aliases", aliases)
		}
		return e, nil
	}
	dns := []string{entries[0].DN, entries[1].DN}
	d.log.Error("ldap: configuration error: more than one entry matches an address; fix the filter or the directory",
		"filter", filter, "base", d.baseDN, "dns", dns)
	return nil, failure.Temp(op, reasonLDAPAmbiguous, fmt.Errorf("%d or more entries match %s", len(entries), filter))
}

// searchFilter runs filter on the search pool and returns at most two
// entries (two are enough to tell an ambiguous filter).
func (d *LDAP) searchFilter(ctx context.Context, filter string, attrs []string) ([]*ldap.Entry, error) {
	var entries []*ldap.Entry
	err := d.withConn(ctx, d.search, "search", func(c *ldap.Conn) error {
		req := ldap.NewSearchRequest(d.baseDN, d.scope, ldap.NeverDerefAliases, 2,
			int((d.timeout+time.Second-1)/time.Second), false, filter, attrs, nil)
		res, err := c.Search(req)
		if res != nil && len(res.Entries) >= 2 {
			// The size limit of 2 was reached: ambiguous, whatever the
			// result code says.
			entries = res.Entries
			return nil
		}
		if err != nil {
			return err
		}
		entries = res.Entries
		return nil
	})
	return entries, err
}

// isOutage reports whether err means the directory could not answer, as
// opposed to answering something nfsdrop cannot use.
func isOutage(err error) bool {
	le, ok := errors.AsType[*ldapError](err)
	return ok && le.outage
}

// filterTemplate is a parsed filter with %s, %u, %d and %%.
type filterTemplate struct {
	parts []string // literal text and the placeholders "%s", "%u", "%d"
}

func parseFilterTemplate(s string) (filterTemplate, error) {
	var t filterTemplate
	if s == "" {
		return t, errors.New("empty filter")
	}
	var lit strings.Builder
	placeholders := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			lit.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return t, errors.New("a '%' at the end (write %% for a percent sign)")
		}
		i++
		switch s[i] {
		case '%':
			lit.WriteByte('%')
		case 's', 'u', 'd':
			if lit.Len() > 0 {
				t.parts = append(t.parts, lit.String())
				lit.Reset()
			}
			t.parts = append(t.parts, "%"+string(s[i]))
			if s[i] != 'd' {
				placeholders++
			}
		default:
			return t, fmt.Errorf("unknown placeholder %%%c (use %%s, %%u, %%d or %%%%)", s[i])
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, lit.String())
	}
	if placeholders == 0 {
		return t, errors.New("the filter must contain %s or %u, or every user would match")
	}
	if _, err := ldap.CompileFilter(t.expand("user@example.org", "user", "example.org")); err != nil {
		return t, fmt.Errorf("%q is not a valid LDAP filter: %v", s, err)
	}
	return t, nil
}

// expand substitutes the values, each escaped with ldap.EscapeFilter.
func (t filterTemplate) expand(address, local, domain string) string {
	var b strings.Builder
	for _, p := range t.parts {
		switch p {
		case "%s":
			b.WriteString(ldap.EscapeFilter(address))
		case "%u":
			b.WriteString(ldap.EscapeFilter(local))
		case "%d":
			b.WriteString(ldap.EscapeFilter(domain))
		default:
			b.WriteString(p)
		}
	}
	return b.String()
}

func attrList(names ...string) []string {
	var out []string
	seen := make(map[string]bool)
	for _, n := range names {
		if n != "" && !seen[strings.ToLower(n)] {
			seen[strings.ToLower(n)] = true
			out = append(out, n)
		}
	}
	return out
}

// ldapServer is one URI and its failure state (guarded by LDAP.srvMu).
type ldapServer struct {
	uri    string
	ldaps  bool
	addr   string // host:port
	host   string // for certificate verification
	failed int
	until  time.Time
}

func parseLDAPURI(s string) (*ldapServer, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("URI %q does not parse", s)
	}
	srv := &ldapServer{uri: s}
	port := "389"
	switch strings.ToLower(u.Scheme) {
	case "ldap":
	case "ldaps":
		srv.ldaps, port = true, "636"
	default:
		return nil, fmt.Errorf("URI %q: the scheme must be ldap:// or ldaps://", s)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("URI %q has no host", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("URI %q: only ldap[s]://host[:port] is supported (set the base DN and filter separately)", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("URI %q: bad port", s)
		}
		port = p
	}
	srv.host = u.Hostname()
	srv.addr = net.JoinHostPort(srv.host, port)
	return srv, nil
}

func (d *LDAP) tlsConfig(host string) *tls.Config {
	return &tls.Config{ServerName: host, RootCAs: d.roots, MinVersion: tls.VersionTLS12}
}

// bindPassword reads the service password. It is never logged.
func (d *LDAP) bindPassword() (string, error) {
	b, err := os.ReadFile(d.bindPWFile)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSuffix(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", errors.New("the bind password file is empty")
	}
	return pw, nil
}

// ldapPathLog adapts the passwd-file's log lines about mailbox paths (see
// LDAP.paths) to LDAP: "passwd-file: " becomes "ldap: ", and the file and
// line attributes, which mean nothing here, are dropped. The user attribute
// is the primary address.
type ldapPathLog struct{ h slog.Handler }

func (l ldapPathLog) Enabled(ctx context.Context, lv slog.Level) bool { return l.h.Enabled(ctx, lv) }

func (l ldapPathLog) Handle(ctx context.Context, r slog.Record) error {
	msg := r.Message
	if rest, ok := strings.CutPrefix(msg, "passwd-file: "); ok {
		msg = "ldap: " + rest
	}
	nr := slog.NewRecord(r.Time, r.Level, msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "file" && a.Key != "line" {
			nr.AddAttrs(a)
		}
		return true
	})
	return l.h.Handle(ctx, nr)
}

func (l ldapPathLog) WithAttrs(as []slog.Attr) slog.Handler { return ldapPathLog{l.h.WithAttrs(as)} }
func (l ldapPathLog) WithGroup(name string) slog.Handler    { return ldapPathLog{l.h.WithGroup(name)} }
