package userdb

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

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
	// mailboxRule builds Users, with the passwd-file's rules for mailbox
	// paths and their confinement.
	mailboxRule mailboxRule
	defQuota    Quota

	closed atomic.Bool
}

var _ DB = (*LDAP)(nil)

// Reasons given to the peer for directory trouble.
const (
	reasonLDAPDown      = "user directory unavailable"
	reasonLDAPAmbiguous = "user directory misconfigured"
	reasonBadEntry      = "user entry unusable"
)

// Timings of the connection pools (not options).
const (
	ldapBackoffStart = time.Second
	// ldapMaxConnAge is when an idle connection is replaced: it returns
	// traffic to the first URI after a failover and stays below the idle
	// timeouts of servers (Active Directory's MaxConnIdleTime is 15 min).
	ldapMaxConnAge = 5 * time.Minute
)

// OpenLDAP checks the options and returns a source. It does not connect:
// the directory may be down when nfsdrop starts, and the first lookup
// connects.
func OpenLDAP(opts LDAPOptions) (*LDAP, error) {
	const op = "open ldap"
	if opts.negative() {
		return nil, failure.Perm(op, "durations and sizes must not be negative", nil)
	}
	opts = opts.withDefaults()
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
		defQuota:     opts.DefaultQuota,
		log:          opts.Logger,
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if err := d.parseDirectory(opts); err != nil {
		return nil, failure.Perm(op, err.Error(), nil)
	}
	if err := d.readCredentials(op, opts.CAFile); err != nil {
		return nil, err
	}
	var err error
	if d.mailboxRule, err = newMailboxRule(op, opts.MailRoot, opts.MaildirName, opts.Normalizer, opts.Volumes); err != nil {
		fe := failure.As(err)
		return nil, failure.New(fe.Kind, op, fe.Reason, fe.Err)
	}
	d.startPools(opts)
	method := "bind"
	if d.compare {
		method = "compare"
	}
	d.log.Info("ldap user source configured", "uris", strings.Join(opts.URIs, " "), "base", d.baseDN,
		"auth", method, "cache", opts.CacheSize)
	return d, nil
}

// parseDirectory parses what the searches are made of: the servers, the
// base DN and scope, the filters, the auth method and the attributes. The
// grammar is that of the exported parsers (ldap_options.go).
func (d *LDAP) parseDirectory(opts LDAPOptions) error {
	if len(opts.URIs) == 0 {
		return errors.New("no LDAP URI configured")
	}
	for _, u := range opts.URIs {
		s, err := parseLDAPURI(u)
		if err != nil {
			return err
		}
		d.servers = append(d.servers, s)
	}
	if opts.BaseDN == "" {
		return errors.New("no base DN configured")
	}
	if err := CheckLDAPDN(opts.BaseDN); err != nil {
		return fmt.Errorf("base DN: %w", err)
	}
	scope, err := ParseLDAPScope(opts.Scope)
	if err != nil {
		return fmt.Errorf("scope %w", err)
	}
	d.scope = int(scope)
	if d.userTmpl, err = parseFilterTemplate(opts.UserFilter); err != nil {
		return fmt.Errorf("user filter: %w", err)
	}
	d.authTmpl = d.userTmpl
	if opts.AuthFilter != "" {
		if d.authTmpl, err = parseFilterTemplate(opts.AuthFilter); err != nil {
			return fmt.Errorf("auth filter: %w", err)
		}
	}
	method, err := ParseLDAPAuthMethod(opts.AuthMethod)
	if err != nil {
		return fmt.Errorf("auth method %w", err)
	}
	d.compare = method == LDAPAuthCompare
	if d.compare && opts.Attrs.Password == "" {
		return errors.New("auth method \"compare\" needs a password attribute")
	}
	if opts.Attrs.Address == "" {
		return errors.New("no address attribute configured")
	}
	if err := opts.Attrs.each(CheckLDAPAttribute); err != nil {
		return err
	}
	d.userAttrs = attrList(opts.Attrs.Address, opts.Attrs.Aliases, opts.Attrs.Mailbox, opts.Attrs.QuotaStorage,
		opts.Attrs.QuotaMessages, opts.Attrs.UID, opts.Attrs.GID, opts.Attrs.Enabled)
	d.authAttrs = d.userAttrs
	if d.compare {
		d.authAttrs = attrList(append(append([]string(nil), d.userAttrs...), opts.Attrs.Password)...)
	}
	return nil
}

// readCredentials reads the CA file and checks the service account,
// reading its password file once so that a missing file fails at start,
// not at the first lookup.
func (d *LDAP) readCredentials(op, caFile string) error {
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return failure.Perm(op, "cannot read the CA file", err)
		}
		d.roots = x509.NewCertPool()
		if !d.roots.AppendCertsFromPEM(pem) {
			return failure.Perm(op, fmt.Sprintf("CA file %s holds no PEM certificate", caFile), nil)
		}
	}
	if d.bindDN == "" {
		return nil
	}
	if err := CheckLDAPDN(d.bindDN); err != nil {
		return failure.Perm(op, "bind DN: "+err.Error(), nil)
	}
	if d.bindPWFile == "" {
		return failure.Perm(op, "a bind DN needs a bind password file", nil)
	}
	if _, err := d.bindPassword(); err != nil {
		return failure.Perm(op, "cannot read the bind password file", err)
	}
	return nil
}

// startPools makes the two connection pools (none is opened yet) and the
// caches.
func (d *LDAP) startPools(opts LDAPOptions) {
	d.search = &ldapPool{d: d, bind: true, slots: make(chan struct{}, opts.PoolSize)}
	d.auth = &ldapPool{d: d, bind: false, slots: make(chan struct{}, opts.PoolSize)}
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
}

// Close closes the connections; later calls fail with a Temporary error.
func (d *LDAP) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.search.close()
	d.auth.close()
	return nil
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
	if e.disabled {
		return nil, failure.New(failure.Disabled, op, reasonDisabled, nil)
	}
	return d.mailboxRule.user(op, &e.account, addr, d.log, "ldap", "dn", e.dn)
}

// ldapEntry is what nfsdrop keeps of a directory entry; it is never
// modified once cached.
type ldapEntry struct {
	dn string
	// account holds name (the normalised primary address), domain, uid,
	// gid, mail (the mailbox attribute) and quota; home is always "".
	account  account
	disabled bool
	// problem, when set, says why the entry cannot be used.
	problem string
	// passwords are the stored hashes (compare mode, Authenticate only).
	passwords []string
}

// parseEntry reads the attributes of a search result.
func (d *LDAP) parseEntry(en *ldap.Entry) *ldapEntry {
	e := &ldapEntry{dn: en.DN, account: account{uid: -1, gid: -1, quota: d.defQuota}}
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
	e.account.name, e.account.domain = a.String(), a.Domain

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
		e.account.mail = mbox
	}
	for _, id := range []struct {
		attr string
		dst  *int
	}{{d.attrs.UID, &e.account.uid}, {d.attrs.GID, &e.account.gid}} {
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
		e.account.quota.Bytes = n
	}
	if v, problem := single(d.attrs.QuotaMessages); problem != "" {
		return problem
	} else if v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return fmt.Sprintf("attribute %s value %s is not a number", d.attrs.QuotaMessages, showField(v))
		}
		e.account.quota.Messages = int64(n)
	}
	if d.attrs.Enabled != "" {
		if vals := en.GetEqualFoldAttributeValues(d.attrs.Enabled); len(vals) > 0 {
			e.disabled = true
			for _, v := range vals {
				if strings.EqualFold(v, d.enabledValue) {
					e.disabled = false
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
			d.log.Debug("ldap: found", "address", joinAddr(local, domain), "dn", e.dn, "name", e.account.name, "aliases", aliases)
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
