package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-maildir"
)

// MaxUIDLLen is RFC 1939's limit on a unique-id listing (section 7: 1 to 70
// characters in the range 0x21 to 0x7E). The part of a Maildir name before
// the first ',' or ':' is what POP3 answers as UIDL, so the names the store
// makes keep that part within the limit.
const MaxUIDLLen = 70

// maxHostPart bounds the host part of a unique name. The rest of the base
// name is at most 47 characters (10 s + ".M" 6 µs + "P" 7 pid + "Q" 10
// counter + "R" 8 hex + "."), so 23 keeps the UIDL ≤ 70 in the worst case.
const maxHostPart = 23

// HostPart returns the Maildir host part for a hostname: '/' and ':' encoded
// as the Maildir spec says (\057, \072), ',' as \054 since we use it to
// separate info fields, and names longer than maxHostPart shortened
// deterministically (a prefix plus a hash of the whole name), so every
// machine keeps a distinct, stable host part.
func HostPart(hostname string) string {
	var b strings.Builder
	for i := 0; i < len(hostname); i++ {
		c := hostname[i]
		switch {
		case c == '/':
			b.WriteString(`\057`)
		case c == ':':
			b.WriteString(`\072`)
		case c == ',':
			b.WriteString(`\054`)
		case c < 0x21 || c > 0x7e:
			b.WriteString(`\` + strconv.FormatUint(uint64(c), 8))
		default:
			b.WriteByte(c)
		}
	}
	h := b.String()
	if len(h) <= maxHostPart {
		return h
	}
	sum := fnv.New32a()
	sum.Write([]byte(hostname))
	tag := hex.EncodeToString(sum.Sum(nil)) // 8 characters
	prefix := strings.TrimRight(h[:maxHostPart-9], `\0123456789`)
	return prefix + "-" + tag
}

// uniqueBase makes the base (UIDL) part of a new message's name:
// <sec>.M<usec>P<pid>Q<n>R<random>.<host>.
func uniqueBase(now time.Time, pid int, n uint32, host string) string {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		// crypto/rand does not fail on Linux; the counter and pid keep
		// names unique on this host anyway.
		binary.BigEndian.PutUint32(rnd[:], uint32(now.UnixNano()))
	}
	var b strings.Builder
	b.Grow(48 + len(host))
	b.WriteString(strconv.FormatInt(now.Unix(), 10))
	b.WriteString(".M")
	us := strconv.Itoa(now.Nanosecond() / 1000)
	b.WriteString(strings.Repeat("0", 6-len(us)))
	b.WriteString(us)
	b.WriteByte('P')
	b.WriteString(strconv.Itoa(pid))
	b.WriteByte('Q')
	b.WriteString(strconv.FormatUint(uint64(n), 10))
	b.WriteByte('R')
	b.WriteString(hex.EncodeToString(rnd[:]))
	b.WriteByte('.')
	b.WriteString(host)
	return b.String()
}

// fullName appends the size fields: ,S= the file's size, ,W= its size with
// every bare LF counted as CRLF and a final line end added when missing
// (the RFC 1939 size POP3 reports; see crlfCounter.pop3Size).
func fullName(base string, size, crlfSize int64) string {
	return base + ",S=" + strconv.FormatInt(size, 10) + ",W=" + strconv.FormatInt(crlfSize, 10)
}

// BaseName is the part of a Maildir file name before the first ',' or ':'
// (the unique part, used as UIDL).
func BaseName(name string) string {
	if i := strings.IndexAny(name, ",:"); i >= 0 {
		return name[:i]
	}
	return name
}

// InfoFlags returns the flags of a Maildir file name's info section
// (":2,<flags>", as Dovecot and Courier write it after the ,S= and ,W=
// fields): ok is false when the name has no info section or one that is not
// version 2. These are go-maildir's rules (its parser is not exported:
// docs/store.md says why the store does not use its Dir) with its Flag type;
// the flags are taken byte by byte, as they stand in the name, so that a
// name is rebuilt from them unchanged (formatInfo).
func InfoFlags(name string) (flags []maildir.Flag, ok bool) {
	_, info, found := strings.Cut(name, ":")
	if !found || !strings.HasPrefix(info, "2,") {
		return nil, false
	}
	flags = make([]maildir.Flag, 0, len(info)-2)
	for i := 2; i < len(info); i++ {
		flags = append(flags, maildir.Flag(info[i]))
	}
	return flags, true
}

// formatInfo is the info section ":2,<flags>" for flags taken by
// InfoFlags.
func formatInfo(flags []maildir.Flag) string {
	b := make([]byte, 0, 3+len(flags))
	b = append(b, ":2,"...)
	for _, f := range flags {
		b = append(b, byte(f))
	}
	return string(b)
}

// SizesFromName reads ,S= and ,W= from a Maildir file name; ok is false
// for a field that is absent or malformed.
func SizesFromName(name string) (size int64, sizeOK bool, crlf int64, crlfOK bool) {
	info := name
	if i := strings.IndexByte(info, ':'); i >= 0 {
		info = info[:i]
	}
	for _, f := range strings.Split(info, ",")[1:] {
		switch {
		case strings.HasPrefix(f, "S="):
			if v, err := strconv.ParseInt(f[2:], 10, 64); err == nil && v >= 0 {
				size, sizeOK = v, true
			}
		case strings.HasPrefix(f, "W="):
			if v, err := strconv.ParseInt(f[2:], 10, 64); err == nil && v >= 0 {
				crlf, crlfOK = v, true
			}
		}
	}
	return
}

// crlfCounter counts bytes as written and as they would be with CRLF line
// ends, across Write calls (a CR at the end of one chunk and LF at the
// start of the next is one CRLF).
type crlfCounter struct {
	size, crlf int64
	lastCR     bool
	lastLF     bool
}

// pop3Size is the RFC 1939 size of the message: its octets as a POP3
// server sends them, with CRLF line ends and, for a message whose last
// line has no line end, the CRLF the server must add before the
// terminating "." (as Courier's pop3d counts it). This is what ,W= holds.
func (c *crlfCounter) pop3Size() int64 {
	if c.size > 0 && !c.lastLF {
		return c.crlf + 2
	}
	return c.crlf
}

func (c *crlfCounter) add(p []byte) {
	c.size += int64(len(p))
	c.crlf += int64(len(p))
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		k := i + j
		wasCR := c.lastCR
		if k > 0 {
			wasCR = p[k-1] == '\r'
		}
		if !wasCR {
			c.crlf++
		}
		i = k + 1
	}
	if len(p) > 0 {
		c.lastCR = p[len(p)-1] == '\r'
		c.lastLF = p[len(p)-1] == '\n'
	}
}
