package userdb

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// This file holds the options of the LDAP source and the parsers of their
// grammar. internal/config calls the same parsers to validate the [ldap]
// section, so a value is judged once, by the rules that use it.

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
	// URIs are tried in order: ldap://host[:port] or ldaps://host[:port]
	// (see CheckLDAPURI).
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
	// BaseDN and Scope ("base", "one" or "sub"; "" = "sub"; see
	// ParseLDAPScope) bound searches.
	BaseDN, Scope string
	// UserFilter finds the user of a recipient address; AuthFilter (""
	// means UserFilter) the user of a POP3 login name. In both, %s is the
	// whole address, %u its local part, %d its domain and %% a percent
	// sign; every substituted value is escaped (RFC 4515). See
	// CheckLDAPFilter.
	UserFilter, AuthFilter string
	// AuthMethod is "bind" (bind as the user's DN with the password; the
	// default) or "compare" (read Attrs.Password with the service account
	// and verify it here, with the schemes of VerifyPassword); see
	// ParseLDAPAuthMethod.
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
	// Volumes are the configured volumes below MailRoot (none: MailRoot is
	// the one volume). A mailbox path "NAME:rel/path" or an absolute path
	// under a volume's path is on that volume, and confined to it.
	Volumes []VolumeRoot
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

// Defaults of LDAPOptions.
const (
	ldapDefaultScope        = "sub"
	ldapDefaultAuthMethod   = "bind"
	ldapDefaultTimeout      = 5 * time.Second
	ldapDefaultPoolSize     = 4
	ldapDefaultRetryBackoff = 30 * time.Second
	ldapDefaultEnabledValue = "TRUE"
)

// withDefaults returns o with the default of every zero value that has one.
func (o LDAPOptions) withDefaults() LDAPOptions {
	set := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	set(&o.Scope, ldapDefaultScope)
	set(&o.AuthMethod, ldapDefaultAuthMethod)
	set(&o.EnabledValue, ldapDefaultEnabledValue)
	if o.Timeout == 0 {
		o.Timeout = ldapDefaultTimeout
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = ldapDefaultRetryBackoff
	}
	if o.PoolSize == 0 {
		o.PoolSize = ldapDefaultPoolSize
	}
	return o
}

// negative reports whether a duration or a size of o is negative.
func (o LDAPOptions) negative() bool {
	return o.Timeout < 0 || o.RetryBackoff < 0 || o.PoolSize < 0 || o.CacheSize < 0 ||
		o.CacheTTL < 0 || o.NegativeCacheTTL < 0 || o.CacheMaxStale < 0 || o.AuthCacheTTL < 0
}

// LDAPScope is a search scope, as go-ldap's SearchRequest takes it.
type LDAPScope int

// ParseLDAPScope parses LDAPOptions.Scope: "base" (the base DN itself),
// "one" (its children) or "sub" (the whole subtree).
func ParseLDAPScope(s string) (LDAPScope, error) {
	switch s {
	case "base":
		return LDAPScope(ldap.ScopeBaseObject), nil
	case "one":
		return LDAPScope(ldap.ScopeSingleLevel), nil
	case "sub":
		return LDAPScope(ldap.ScopeWholeSubtree), nil
	}
	return 0, fmt.Errorf("must be \"base\", \"one\" or \"sub\", got %q", s)
}

// LDAPAuthMethod is how Authenticate checks a password.
type LDAPAuthMethod int

const (
	// LDAPAuthBind binds as the user's DN with the password.
	LDAPAuthBind LDAPAuthMethod = iota
	// LDAPAuthCompare reads the password attribute with the service
	// account and verifies it here.
	LDAPAuthCompare
)

// ParseLDAPAuthMethod parses LDAPOptions.AuthMethod: "bind" or "compare".
func ParseLDAPAuthMethod(s string) (LDAPAuthMethod, error) {
	switch s {
	case "bind":
		return LDAPAuthBind, nil
	case "compare":
		return LDAPAuthCompare, nil
	}
	return 0, fmt.Errorf("must be \"bind\" or \"compare\", got %q", s)
}

// CheckLDAPDN checks that a base or bind DN parses.
func CheckLDAPDN(s string) error {
	if _, err := ldap.ParseDN(s); err != nil {
		return fmt.Errorf("%q is not a DN: %v", s, err)
	}
	return nil
}

// CheckLDAPAttribute checks an attribute name of LDAPAttributes: an
// attribute description without options, a name (a letter, then letters,
// digits and '-') or a numeric OID.
func CheckLDAPAttribute(s string) error {
	if !validAttrName(s) {
		return fmt.Errorf("%q is not an attribute name (letters, digits and '-', starting with a letter, or an OID)", s)
	}
	return nil
}

func validAttrName(s string) bool {
	if s == "" {
		return false
	}
	if s[0] >= '0' && s[0] <= '9' {
		for _, part := range strings.Split(s, ".") {
			if part == "" || strings.Trim(part, "0123456789") != "" {
				return false
			}
		}
		return true
	}
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && (r >= '0' && r <= '9' || r == '-')) {
			return false
		}
	}
	return true
}

// each calls f with the name of every attribute set in a.
func (a LDAPAttributes) each(f func(name string) error) error {
	for _, n := range []string{a.Address, a.Aliases, a.Mailbox, a.QuotaStorage, a.QuotaMessages, a.UID, a.GID, a.Enabled, a.Password} {
		if n == "" {
			continue
		}
		if err := f(n); err != nil {
			return err
		}
	}
	return nil
}

// CheckLDAPURI checks a URI of LDAPOptions.URIs: "ldap://host[:port]" or
// "ldaps://host[:port]", with an optional "/" and nothing else.
func CheckLDAPURI(s string) error {
	_, err := parseLDAPURI(s)
	return err
}

func parseLDAPURI(s string) (*ldapServer, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not \"ldap://host[:port]\" or \"ldaps://host[:port]\"", s)
	}
	srv := &ldapServer{uri: s}
	port := "389"
	switch u.Scheme { // url.Parse lowers its case
	case "ldap":
	case "ldaps":
		srv.ldaps, port = true, "636"
	default:
		return nil, fmt.Errorf("%q is not \"ldap://host[:port]\" or \"ldaps://host[:port]\"", s)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("%q: give only the scheme, host and port (base_dn and user_filter are separate keys)", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("%q: the port must be a number from 1 to 65535", s)
		}
		port = p
	}
	srv.host = u.Hostname()
	srv.addr = net.JoinHostPort(srv.host, port)
	return srv, nil
}

// filterTemplate is a parsed filter with %s, %u, %d and %%.
type filterTemplate struct {
	parts []string // literal text and the placeholders "%s", "%u", "%d"
}

// CheckLDAPFilter checks a filter of LDAPOptions.UserFilter or AuthFilter:
// an LDAP filter in parentheses with the placeholders %s, %u, %d and %%,
// at least one of %s and %u (else every user would match).
func CheckLDAPFilter(s string) error {
	_, err := parseFilterTemplate(s)
	return err
}

func parseFilterTemplate(s string) (filterTemplate, error) {
	var t filterTemplate
	if !strings.HasPrefix(s, "(") || !strings.HasSuffix(s, ")") {
		return t, fmt.Errorf("%q must be an LDAP filter in parentheses", s)
	}
	var lit strings.Builder
	depth, user := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			if depth--; depth < 0 {
				return t, fmt.Errorf("%q has unbalanced parentheses", s)
			}
		}
		if s[i] != '%' {
			lit.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return t, fmt.Errorf("%q ends with '%%' (write %%%% for a percent sign)", s)
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
			user = user || s[i] != 'd'
		default:
			return t, fmt.Errorf("%q: unknown placeholder %%%c (use %%s, %%u, %%d or %%%%)", s, s[i])
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, lit.String())
	}
	if depth != 0 {
		return t, fmt.Errorf("%q has unbalanced parentheses", s)
	}
	if !user {
		return t, fmt.Errorf("%q must contain %%s or %%u, or it matches every user", s)
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
