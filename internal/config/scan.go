package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// scan checks the [scan] section.
func (v *validator) scan(c *Config) {
	sc := &c.Scan
	if sc.Enabled && len(sc.Clamd) == 0 {
		v.fail("scan.clamd", "must list at least one address when scan.enabled is true")
	}
	seen := make(map[string]bool)
	for _, a := range sc.Clamd {
		network, address, err := splitClamd(a)
		if err != nil {
			v.fail("scan.clamd", "%v", err)
			continue
		}
		if seen[network+" "+address] {
			v.fail("scan.clamd", "%q is listed twice", a)
		}
		seen[network+" "+address] = true
	}
	v.atLeast("scan.timeout", sc.Timeout, Duration(time.Second))
	v.oneOf("scan.action", sc.Action, "reject", "quarantine", "tag")
	switch q, root := sc.QuarantineMaildir, c.Store.MailRoot; {
	case q == "":
		if sc.Action == "quarantine" {
			v.fail("scan.quarantine_maildir", "must be set when scan.action is \"quarantine\"")
		}
	case !filepath.IsAbs(q):
		v.fail("scan.quarantine_maildir", "%q must be an absolute path", q)
	case filepath.Clean(q) != q:
		v.fail("scan.quarantine_maildir", "%q must be a clean path (did you mean %q?)", q, filepath.Clean(q))
	case !filepath.IsAbs(root) || !inside(root, q):
		v.fail("scan.quarantine_maildir", "%q must be inside store.mail_root (%q)", q, root)
	}
	v.oneOf("scan.on_too_large", sc.OnTooLarge, "tempfail", "skip")
	if m, limit := sc.StreamMaxLength, c.LMTP.MaxMessageSize; sc.Enabled && sc.OnTooLarge == "tempfail" && m > 0 && m < limit {
		v.fail("scan.stream_max_length", "%q is less than lmtp.max_message_size (%q): with scan.on_too_large = \"tempfail\", "+
			"a message in between could never be delivered. Raise clamd's StreamMaxLength and this key to at least %q, "+
			"lower lmtp.max_message_size, or set scan.on_too_large = \"skip\"", m, limit, limit)
	}
}

// splitClamd checks a clamd address: a listen address (SplitListen) that
// names its host, since it is connected to, not listened on.
func splitClamd(s string) (network, address string, err error) {
	network, address, err = SplitListen(s)
	if err != nil {
		return "", "", err
	}
	if network == "tcp" && strings.HasPrefix(address, ":") {
		return "", "", fmt.Errorf("%q: a clamd address must name its host, as in \"tcp:127.0.0.1:3310\"", s)
	}
	return network, address, nil
}

// inside reports whether path is strictly below dir (both clean and
// absolute).
func inside(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && filepath.IsLocal(rel)
}
