package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
)

// Validate checks every value and returns all problems joined with
// errors.Join, each an *Error naming the key and, when the key is in the
// file, its line ("nfsdrop.toml:7: key store.mail_root: must be an absolute
// path"); a key that is not in the file is marked "(default)". Validate does
// not look at the file system.
func (c *Config) Validate() error {
	v := &validator{src: c.src}

	// top level
	if h := c.Hostname; h != "" {
		switch {
		case len(h) > 255:
			v.fail("hostname", "must be at most 255 bytes, got %d", len(h))
		case strings.IndexFunc(h, badHostRune) >= 0:
			v.fail("hostname", "%q must not contain '/', ':', ',', white space or control characters", h)
		}
	}

	// [log]
	v.oneOf("log.format", c.Log.Format, "logfmt", "json")
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")

	// [store]
	switch p := c.Store.MailRoot; {
	case p == "":
		v.fail("store.mail_root", "must be set")
	case !filepath.IsAbs(p):
		v.fail("store.mail_root", "%q must be an absolute path", p)
	case filepath.Clean(p) != p:
		v.fail("store.mail_root", "%q must be a clean path (did you mean %q?)", p, filepath.Clean(p))
	}
	if m := c.Store.MountMarker; m != "" && (!filepath.IsLocal(m) || filepath.Clean(m) == ".") {
		v.fail("store.mount_marker", "%q must be a file name relative to store.mail_root, or \"\" to disable the check", m)
	}
	v.volumes(&c.Store)
	v.between("store.volume_max_calls", int64(c.Store.VolumeMaxCalls), 1, 1000)
	v.atLeast("store.volume_call_wait", c.Store.VolumeCallWait, Duration(10*time.Millisecond))
	v.atLeast("store.volume_probe_interval", c.Store.VolumeProbeInterval, Duration(100*time.Millisecond))
	v.atLeast("store.volume_probe_timeout", c.Store.VolumeProbeTimeout, Duration(100*time.Millisecond))
	v.oneOf("store.quota_action", c.Store.QuotaAction, "bounce", "defer")
	v.atLeast("store.tmp_max_age", c.Store.TmpMaxAge, Duration(time.Hour))
	v.between("store.estale_retries", int64(c.Store.EstaleRetries), 0, 10)

	// [userdb]
	switch d := c.UserDB.Driver; d {
	case "passwd-file":
		if c.UserDB.PasswdFile == "" {
			v.fail("userdb.passwd_file", "must be set when userdb.driver is \"passwd-file\"")
		}
	case "ldap":
		v.ldap(&c.LDAP)
	default:
		v.fail("userdb.driver", "must be \"passwd-file\" or \"ldap\", got %q", d)
	}
	if m := c.UserDB.Maildir; !filepath.IsLocal(m) {
		v.fail("userdb.maildir", "%q must be a relative path inside the home directory (\".\" for the home directory itself)", m)
	}
	if d := c.UserDB.RecipientDelimiter; d != "" {
		for _, r := range d {
			if r > unicode.MaxASCII || !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r) {
				v.fail("userdb.recipient_delimiter", "%q: delimiters must be punctuation allowed in addresses, such as + or -, not %q", d, r)
				break
			}
		}
	}
	if d := c.UserDB.DefaultDomain; d != "" && !validDomain(d) {
		v.fail("userdb.default_domain", "%q is not a domain name", d)
	}
	v.atLeastInt("userdb.quota_storage", int64(c.UserDB.QuotaStorage), 0, "")
	v.atLeastInt("userdb.quota_messages", c.UserDB.QuotaMessages, 0, "")

	// [lmtp]
	listeners := make(map[string]string) // network+address → key
	v.listen("lmtp.listen", c.LMTP.Listen, listeners)
	v.atLeastInt("lmtp.max_message_size", int64(c.LMTP.MaxMessageSize), 1, "")
	v.atLeastInt("lmtp.max_recipients", int64(c.LMTP.MaxRecipients), 1, "")
	v.atLeastInt("lmtp.max_user_concurrency", int64(c.LMTP.MaxUserConcurrency), 0, " (0 means unlimited)")
	v.atLeastInt("lmtp.max_connections", int64(c.LMTP.MaxConnections), 1, "")
	v.atLeastInt("lmtp.max_line_length", int64(c.LMTP.MaxLineLength), 1000, " (RFC 5321 requires 1000)")
	v.atLeast("lmtp.read_timeout", c.LMTP.ReadTimeout, Duration(time.Second))
	v.atLeast("lmtp.write_timeout", c.LMTP.WriteTimeout, Duration(time.Second))
	v.oneOf("lmtp.delivered_to", c.LMTP.DeliveredTo, "single", "always")
	v.atLeast("lmtp.shutdown_timeout", c.LMTP.ShutdownTimeout, Duration(time.Second))
	v.atLeast("lmtp.commit_deadline", c.LMTP.CommitDeadline, Duration(time.Second))

	// [scan]
	v.scan(c)

	// [pop3]
	p := &c.POP3
	v.listen("pop3.listen", p.Listen, listeners)
	v.listen("pop3.listen_tls", p.ListenTLS, listeners)
	var needTLS string
	switch {
	case len(p.ListenTLS) > 0:
		needTLS = "pop3.listen_tls is set"
	case p.STLS:
		needTLS = "pop3.stls is true"
	}
	for _, k := range []struct{ key, val, other string }{
		{"pop3.tls_cert", p.TLSCert, p.TLSKey},
		{"pop3.tls_key", p.TLSKey, p.TLSCert},
	} {
		switch {
		case k.val == "" && needTLS != "":
			v.fail(k.key, "must be set when %s", needTLS)
		case k.val == "" && k.other != "":
			v.fail(k.key, "must be set together with pop3.tls_cert and pop3.tls_key")
		case k.val != "" && !filepath.IsAbs(k.val):
			v.fail(k.key, "%q must be an absolute path", k.val)
		}
	}
	v.prefixes("pop3.trusted_networks", p.TrustedNetworks)
	v.prefixes("pop3.proxy_networks", p.ProxyNetworks)
	v.atLeast("pop3.idle_timeout", p.IdleTimeout, Duration(10*time.Minute))
	v.atLeast("pop3.login_timeout", p.LoginTimeout, Duration(time.Second))
	v.atLeastInt("pop3.max_sessions", int64(p.MaxSessions), 1, "")
	v.atLeastInt("pop3.max_per_ip", int64(p.MaxPerIP), 1, "")
	v.atLeast("pop3.auth_fail_delay", p.AuthFailDelay, 0)
	v.atLeastInt("pop3.max_auth_failures", int64(p.MaxAuthFailures), 1, "")
	v.atLeast("pop3.lock_stale", p.LockStale, Duration(30*time.Second))
	v.oneOf("pop3.uidl_format", p.UIDLFormat, "maildir", "dovecot", "courier")

	// [metrics]
	if l := c.Metrics.Listen; l != "" {
		v.listen("metrics.listen", []string{l}, listeners)
	}
	if l := c.Metrics.POP3Listen; l != "" {
		v.listen("metrics.pop3_listen", []string{l}, listeners)
	}

	// Report in file order; keys without a line (defaults) last.
	slices.SortStableFunc(v.errs, func(a, b error) int {
		la, lb := a.(*Error).Line, b.(*Error).Line
		if la == 0 || lb == 0 {
			return cmp.Compare(lb, la) // 0 sorts after any line
		}
		return cmp.Compare(la, lb)
	})
	return errors.Join(v.errs...)
}

// ldap checks the [ldap] section; only done when userdb.driver is "ldap",
// so that its required keys need not be set otherwise. The grammar of the
// values (URIs, DNs, scope, filters, auth method, attribute names) is
// userdb's, checked by its own parsers: what passes here, the LDAP source
// accepts. What is checked here is what involves the keys: which must be
// set, and with which others.
func (v *validator) ldap(l *LDAP) {
	if len(l.URIs) == 0 {
		v.fail("ldap.uris", "must list at least one server when userdb.driver is \"ldap\"")
	}
	for _, u := range l.URIs {
		v.check("ldap.uris", userdb.CheckLDAPURI(u))
	}
	for _, k := range []struct{ key, val string }{
		{"ldap.ca_file", l.CAFile},
		{"ldap.bind_password_file", l.BindPasswordFile},
	} {
		if k.val != "" && !filepath.IsAbs(k.val) {
			v.fail(k.key, "%q must be an absolute path", k.val)
		}
	}
	switch {
	case l.BindDN != "" && l.BindPasswordFile == "":
		v.fail("ldap.bind_password_file", "must be set when ldap.bind_dn is set")
	case l.BindDN == "" && l.BindPasswordFile != "":
		v.fail("ldap.bind_dn", "must be set when ldap.bind_password_file is set")
	}
	if l.BindDN != "" {
		v.check("ldap.bind_dn", userdb.CheckLDAPDN(l.BindDN))
	}
	if l.BaseDN == "" {
		v.fail("ldap.base_dn", "must be set when userdb.driver is \"ldap\"")
	} else {
		v.check("ldap.base_dn", userdb.CheckLDAPDN(l.BaseDN))
	}
	_, err := userdb.ParseLDAPScope(l.Scope)
	v.check("ldap.scope", err)
	v.check("ldap.user_filter", userdb.CheckLDAPFilter(l.UserFilter))
	if l.AuthFilter != "" {
		v.check("ldap.auth_filter", userdb.CheckLDAPFilter(l.AuthFilter))
	}
	_, err = userdb.ParseLDAPAuthMethod(l.AuthMethod)
	v.check("ldap.auth_method", err)
	if l.AuthMethod == "compare" && l.AttrPassword == "" {
		v.fail("ldap.attr_password", "must be set when ldap.auth_method is \"compare\"")
	}
	if l.AttrAddress == "" {
		v.fail("ldap.attr_address", "must be set")
	}
	if l.AttrEnabled != "" && l.EnabledValue == "" {
		v.fail("ldap.enabled_value", "must be set when ldap.attr_enabled is set")
	}
	for _, k := range []struct{ key, val string }{
		{"ldap.attr_address", l.AttrAddress}, {"ldap.attr_aliases", l.AttrAliases},
		{"ldap.attr_mailbox", l.AttrMailbox}, {"ldap.attr_quota_storage", l.AttrQuotaStorage},
		{"ldap.attr_quota_messages", l.AttrQuotaMessages}, {"ldap.attr_uid", l.AttrUID},
		{"ldap.attr_gid", l.AttrGID}, {"ldap.attr_enabled", l.AttrEnabled}, {"ldap.attr_password", l.AttrPassword},
	} {
		if k.val != "" {
			v.check(k.key, userdb.CheckLDAPAttribute(k.val))
		}
	}
	v.atLeast("ldap.timeout", l.Timeout, Duration(100*time.Millisecond))
	v.between("ldap.pool_size", int64(l.PoolSize), 1, 64)
	v.atLeast("ldap.retry_backoff", l.RetryBackoff, Duration(time.Second))
	v.atLeastInt("ldap.cache_size", int64(l.CacheSize), 0, " (0 turns the cache off)")
	if l.AuthCacheTTL > Duration(time.Hour) {
		v.fail("ldap.auth_cache_ttl", "must be at most \"1h\", got %q", l.AuthCacheTTL)
	}
}

type validator struct {
	src  *source
	errs []error
}

// volumes checks the [[store.volumes]] tables: names usable as metric
// labels and in "NAME:path" mailbox paths, paths strictly below mail_root
// and not nested (a mailbox path must name one volume), and at least one
// volume for new mailboxes.
func (v *validator) volumes(st *Store) {
	if len(st.Volumes) == 0 {
		return
	}
	names := make(map[string]int)
	takesNew := false
	for i, vol := range st.Volumes {
		fail := func(key, format string, args ...any) {
			v.errs = append(v.errs, v.src.elemError("store.volumes", i, key, format, args...))
		}
		switch {
		case vol.Name == "":
			fail("name", "must be set")
		case !volumeName.MatchString(vol.Name):
			fail("name", "%q must be a lower-case letter, then at most 31 lower-case letters, digits, '_' or '-'", vol.Name)
		default:
			if j, dup := names[vol.Name]; dup {
				fail("name", "%q is also the name of volume %d", vol.Name, j+1)
			}
			names[vol.Name] = i
		}
		switch p := vol.Path; {
		case p == "":
			fail("path", "must be set")
		case !filepath.IsAbs(p):
			fail("path", "%q must be an absolute path", p)
		case filepath.Clean(p) != p:
			fail("path", "%q must be a clean path (did you mean %q?)", p, filepath.Clean(p))
		case !pathStrictlyUnder(st.MailRoot, p):
			fail("path", "%q must be below store.mail_root %q", p, st.MailRoot)
		default:
			for j, other := range st.Volumes[:i] {
				if p == other.Path || pathStrictlyUnder(p, other.Path) || pathStrictlyUnder(other.Path, p) {
					fail("path", "%q overlaps the path %q of volume %d: volumes must not lie inside each other", p, other.Path, j+1)
				}
			}
		}
		if m := vol.MountMarker; m != "" && (!filepath.IsLocal(m) || filepath.Clean(m) == ".") {
			fail("mount_marker", "%q must be a file name relative to the volume's path, or \"\" for store.mount_marker", m)
		}
		takesNew = takesNew || vol.NewMailboxes
	}
	if !takesNew {
		v.fail("store.volumes", "at least one volume must have new_mailboxes = true")
	}
}

// volumeName is what a volume name may be: a metric label value and the
// prefix of "NAME:path" mailbox paths, so short and plain.
var volumeName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// pathStrictlyUnder reports whether the clean absolute path p lies below
// root (and is not root itself).
func pathStrictlyUnder(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

func (v *validator) fail(key, format string, args ...any) {
	v.errs = append(v.errs, v.src.keyError(key, format, args...))
}

// check records err, if any, as the problem of key.
func (v *validator) check(key string, err error) {
	if err != nil {
		v.fail(key, "%v", err)
	}
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = strconv.Quote(a)
	}
	v.fail(key, "must be %s, got %q", orList(q), val)
}

func orList(q []string) string {
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func (v *validator) between(key string, n, lo, hi int64) {
	if n < lo || n > hi {
		v.fail(key, "must be between %d and %d, got %d", lo, hi, n)
	}
}

func (v *validator) atLeastInt(key string, n, lo int64, why string) {
	if n < lo {
		v.fail(key, "must be at least %d%s, got %d", lo, why, n)
	}
}

func (v *validator) atLeast(key string, d, lo Duration) {
	if d < lo {
		v.fail(key, "must be at least %q, got %q", lo, d)
	}
}

// listen checks the addresses of a listen key; seen maps the addresses of
// the keys checked before to their key, to refuse an address used twice.
func (v *validator) listen(key string, addrs []string, seen map[string]string) {
	for _, a := range addrs {
		network, address, err := SplitListen(a)
		if err != nil {
			v.fail(key, "%v", err)
			continue
		}
		id := network + " " + address
		if other, dup := seen[id]; dup {
			if other == key {
				v.fail(key, "%q is listed twice", a)
			} else {
				v.fail(key, "%q is also in %s", a, other)
			}
			continue
		}
		seen[id] = key
	}
}

func (v *validator) prefixes(key string, nets []string) {
	for _, n := range nets {
		if _, err := ParsePrefix(n); err != nil {
			v.fail(key, "%v", err)
		}
	}
}

func badHostRune(r rune) bool {
	return r == '/' || r == ':' || r == ',' || unicode.IsSpace(r) || unicode.IsControl(r)
}

// validDomain reports whether d looks like a domain name: dot-separated
// labels of letters, digits and hyphens (or any non-ASCII letters, for
// internationalised names), 253 bytes at most.
func validDomain(d string) bool {
	if len(d) > 253 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if r != '-' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
				return false
			}
		}
	}
	return true
}

// SplitListen splits a listen address as written in the configuration
// ("unix:/path", "tcp:host:port" or "host:port") into the network ("unix" or
// "tcp") and address arguments of net.Listen. The port must be numeric and
// the socket path absolute.
func SplitListen(s string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		switch {
		case !filepath.IsAbs(path):
			return "", "", fmt.Errorf("%q: the socket path must be absolute", s)
		case len(path) > 107:
			return "", "", fmt.Errorf("%q: the socket path is longer than 107 bytes", s)
		}
		return "unix", path, nil
	}
	hostport := strings.TrimPrefix(s, "tcp:")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || strings.ContainsAny(port, "/:") {
		return "", "", fmt.Errorf("%q is not \"unix:/path\", \"tcp:host:port\" or \"host:port\"", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("%q: the port must be a number from 1 to 65535", s)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && !validDomain(host) {
			return "", "", fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
		}
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

// ParsePrefix parses a network of pop3.trusted_networks or
// pop3.proxy_networks: CIDR notation ("192.0.2.0/24", "2001:db8::/32") or a
// bare address, meaning that one host. A prefix with host bits set
// ("10.1.2.3/8") is refused as a likely mistake.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not a network in CIDR notation or an IP address", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a network in CIDR notation", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %q?", s, m.String())
	}
	return p, nil
}
