package pop3

import (
	"bytes"
	"errors"
	"math"
	"strings"
)

// command is one parsed command line (RFC 1939 section 3, RFC 2449
// section 3): a case-insensitive keyword, then arguments separated by
// spaces.
type command struct {
	verb string   // upper case, one of verbs
	args []string // the arguments, split on spaces
	rest string   // everything after the keyword and one space, as sent
}

var (
	errNUL     = errors.New("NUL byte in command")
	errUnknown = errors.New("unknown command")
)

// verbs are the keywords the server knows. Parsing maps a keyword to one
// of these constants, so an arbitrary keyword never becomes a string. APOP
// is absent on purpose: it needs the password in clear on the server, and
// it is not offered in the greeting.
var verbs = [...]string{
	"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT",
	"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
	// PROXY is not a POP3 command: it is what a PROXY protocol v1 header
	// looks like when it comes from a peer not in ProxyNetworks.
	"PROXY",
}

// parseCommand parses a command line without its CRLF. The line is only
// read; the command holds copies.
func parseCommand(line []byte) (command, error) {
	if bytes.IndexByte(line, 0) >= 0 {
		// A NUL has no place in a command and is a classic way to make
		// the two ends of a string comparison disagree.
		return command{}, errNUL
	}
	kw, rest, hasRest := bytes.Cut(line, []byte{' '})
	var cmd command
	for _, v := range verbs {
		if asciiEqualFold(kw, v) {
			cmd.verb = v
			break
		}
	}
	if cmd.verb == "" {
		return command{}, errUnknown
	}
	if hasRest {
		cmd.rest = string(rest)
		cmd.args = strings.FieldsFunc(cmd.rest, func(r rune) bool { return r == ' ' })
	}
	return cmd, nil
}

// parseMsgNum parses a message number (RFC 1939 section 3: a decimal
// number starting at 1) against a mailbox of n messages and returns the
// 0-based index. Only ASCII digits are accepted: no sign, no spaces, no
// hex; a number above n is refused while it is read, so a long string of
// digits cannot overflow.
func parseMsgNum(s string, n int) (int, bool) {
	if s == "" {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
		if v > n {
			return 0, false
		}
	}
	if v < 1 {
		return 0, false
	}
	return v - 1, true
}

// parseLineCount parses the line count of TOP (RFC 1939 section 7: a
// non-negative number). A count too big for an int means "all of it".
func parseLineCount(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var v int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (math.MaxInt64-9)/10 {
			v = math.MaxInt64
			continue // keep checking that the rest are digits
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// asciiEqualFold compares a keyword case-insensitively in ASCII only
// (RFC 1939 keywords are ASCII). bytes.EqualFold uses Unicode folding,
// under which "Uſer" (with U+017F, long s) would be USER: found by
// FuzzCommand.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
