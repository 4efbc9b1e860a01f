package userdb

import (
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Limits from RFC 5321 section 4.5.3.1. An address longer than this cannot
// have come from a conforming MTA, and the limits keep every piece we build
// a path from well under NAME_MAX.
const (
	maxAddressLen = 254
	maxLocalLen   = 64
	maxDomainLen  = 253
	maxLabelLen   = 63
)

// Normalizer turns a recipient address into its canonical form.
//
// The zero value is usable: no recipient delimiter, no default domain.
type Normalizer struct {
	// Delimiters is Postfix's recipient_delimiter: a set of characters,
	// e.g. "+" or "+-"; "" means addresses carry no detail.
	Delimiters string
	// DefaultDomain is the domain assumed for a bare local part; "" means
	// a bare local part stays bare.
	DefaultDomain string
}

// Address is a parsed, normalised address.
type Address struct {
	// Local is the lowercased local part with the detail removed.
	Local string
	// Detail is what followed the recipient delimiter, without the
	// delimiter. Its case is kept because it may name a folder. It is never
	// "." or "..", and never contains '/', but it is still user input.
	Detail string
	// Domain is lowercased, without a trailing dot; "" for a bare local
	// part when there is no default domain.
	Domain string
}

// String returns local@domain, or local when there is no domain.
func (a Address) String() string {
	if a.Domain == "" {
		return a.Local
	}
	return a.Local + "@" + a.Domain
}

// Validate checks the Normalizer's own settings, so a bad configuration is
// reported once at startup rather than as a refusal of every address.
func (n Normalizer) Validate() error {
	for _, r := range n.Delimiters {
		if r >= utf8.RuneSelf || r <= ' ' || r == 0x7f || r == '@' || r == '"' || r == '/' {
			return failure.New(failure.BadInput, "recipient delimiter", "delimiters must be printable ASCII other than '@', '\"' and '/'", nil)
		}
	}
	if n.DefaultDomain != "" {
		if _, reason := normalizeDomain(n.DefaultDomain); reason != "" {
			return failure.New(failure.BadInput, "default domain", reason, nil)
		}
	}
	return nil
}

// Normalize parses addr (optionally in <angle brackets>) and returns its
// canonical form. A refusal is a *failure.Error of kind BadInput whose
// Reason never echoes the input.
func (n Normalizer) Normalize(addr string) (Address, error) {
	a, _, err := n.parse(addr, true, true)
	return a, err
}

// parse does the work of Normalize. full is the lowercased local part before
// the detail was split off (equal to a.Local when there was no detail), so a
// lookup can try the unsplit name first as Postfix does. split=false keeps
// the local part whole (used for user names in a passwd-file, which are taken
// literally); applyDefault=false leaves a bare local part without a domain.
func (n Normalizer) parse(addr string, split, applyDefault bool) (a Address, full string, err error) {
	bad := func(reason string) (Address, string, error) {
		return Address{}, "", failure.New(failure.BadInput, "normalize address", reason, nil)
	}
	if addr == "" {
		return bad("empty address")
	}
	// Postfix hands us bare addresses, but LMTP's RCPT TO and some tools use
	// <user@dom>; accept both, but only a matched pair.
	hasOpen, hasClose := strings.HasPrefix(addr, "<"), strings.HasSuffix(addr, ">")
	if hasOpen != hasClose || (hasOpen && len(addr) < 2) {
		return bad("unbalanced angle brackets")
	}
	if hasOpen {
		addr = addr[1 : len(addr)-1]
		if addr == "" {
			return bad("empty address")
		}
	}
	if len(addr) > maxAddressLen {
		return bad("address too long")
	}
	if !utf8.ValidString(addr) {
		return bad("address is not valid UTF-8")
	}
	for _, r := range addr {
		if r < ' ' || r == 0x7f || unicode.IsControl(r) || unicode.IsSpace(r) {
			return bad("address contains a control character or space")
		}
	}
	// A quoted local part ("john doe"@example.com) may legally contain '@',
	// '/', spaces and backslash escapes. Supporting it would mean an RFC 5322
	// parser and then escaping the result before it becomes a directory
	// name; no real mailbox needs one, so refuse it outright.
	if strings.ContainsRune(addr, '"') {
		return bad("quoted local parts are not supported")
	}

	local, domain, hasAt := strings.Cut(addr, "@")
	if strings.ContainsRune(domain, '@') {
		return bad("more than one '@'")
	}
	if local == "" {
		return bad("missing local part")
	}
	if hasAt {
		if domain == "" {
			return bad("empty domain")
		}
		d, reason := normalizeDomain(domain)
		if reason != "" {
			return bad(reason)
		}
		domain = d
	} else if applyDefault && n.DefaultDomain != "" {
		d, reason := normalizeDomain(n.DefaultDomain)
		if reason != "" {
			return bad("invalid default domain")
		}
		domain = d
	}

	if len(local) > maxLocalLen {
		return bad("local part too long")
	}
	for _, r := range local {
		if !localRune(r) {
			return bad("local part contains a character that is not allowed")
		}
	}

	// The local part is compared case-insensitively: Postfix's local(8)
	// and virtual(8) lowercase it before lookups, and Dovecot's default
	// auth_username_format (%Lu) does the same. So "Alice" and "alice"
	// are the same mailbox, as they would be for Dovecot reading it.
	// The detail keeps its case (it may name a folder), so split before
	// lowercasing.
	full = strings.ToLower(local)
	var detail string
	if split {
		local, detail = splitDetail(local, n.Delimiters)
	}
	local = strings.ToLower(local)
	if len(local) > maxLocalLen || len(full) > maxLocalLen {
		// Unicode lowercasing can make a string longer.
		return bad("local part too long")
	}
	// The local part becomes a directory name (MailRoot/domain/local), so
	// it must not be a path element with a meaning of its own. '/' was
	// refused above; these are the rest.
	if local == "." || local == ".." || full == "." || full == ".." {
		return bad("local part could be mistaken for a path element")
	}
	if detail == "." || detail == ".." {
		return bad("detail could be mistaken for a path element")
	}
	return Address{Local: local, Detail: detail, Domain: domain}, full, nil
}

// localRune reports whether r may appear in an unquoted local part: RFC 5322
// atext plus '.', and any printable non-ASCII character (SMTPUTF8). '/' is
// atext but is refused because the local part becomes a path element. The
// specials ()<>[]:;,\ can only appear in a quoted local part, which we
// refuse anyway.
func localRune(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case r >= utf8.RuneSelf:
		return unicode.IsGraphic(r) && !unicode.IsSpace(r)
	}
	return strings.ContainsRune("!#$%&'*+-=?^_`{|}~.", r)
}

// splitDetail splits local at the first delimiter character, with Postfix's
// exceptions (split_addr.c): a local part that starts with a delimiter is
// not split (so "+foo" stays "+foo", it is not an empty user); postmaster,
// mailer-daemon and double-bounce never are (with delimiter "-",
// "mailer-daemon" would otherwise become "mailer"); and when '-' is a
// delimiter, neither are owner-* and *-request (mailing list conventions
// Postfix keeps for backwards compatibility).
func splitDetail(local, delims string) (user, detail string) {
	if delims == "" {
		return local, ""
	}
	lower := strings.ToLower(local)
	switch lower {
	case "postmaster", "mailer-daemon", "double-bounce":
		return local, ""
	}
	if strings.ContainsRune(delims, '-') {
		if strings.HasPrefix(lower, "owner-") || (len(lower) > len("-request") && strings.HasSuffix(lower, "-request")) {
			return local, ""
		}
	}
	i := strings.IndexAny(local, delims)
	if i <= 0 {
		return local, ""
	}
	return local[:i], local[i+1:]
}

// normalizeDomain lowercases d, strips one trailing dot (the root), and
// checks it is a host name of letter-digit-hyphen labels or an IP literal.
// It returns a non-empty reason when d is refused. Every label is checked
// non-empty: the domain becomes a directory name, and "..." would otherwise
// turn into "..".
func normalizeDomain(d string) (string, string) {
	d = strings.ToLower(d)
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return "", "malformed address literal"
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(lit, "ipv6:"); ok {
			ip, err := netip.ParseAddr(v6)
			if err != nil || !ip.Is6() || ip.Zone() != "" {
				return "", "malformed address literal"
			}
			return "[ipv6:" + ip.String() + "]", ""
		}
		ip, err := netip.ParseAddr(lit)
		if err != nil || !ip.Is4() {
			return "", "malformed address literal"
		}
		return "[" + ip.String() + "]", ""
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", "empty domain"
	}
	if len(d) > maxDomainLen {
		return "", "domain too long"
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" {
			return "", "empty label in domain"
		}
		if len(label) > maxLabelLen {
			return "", "domain label too long"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", "domain contains a character that is not allowed"
			}
		}
	}
	return d, ""
}
