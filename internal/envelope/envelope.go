// Package envelope holds what the LMTP server and the deliver command
// both do to a message on its way into a Maildir: reading its header
// section (for loop detection), and making the trace headers
// (Return-Path, Delivered-To, Received) that a final delivery agent adds.
package envelope

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"time"
)

// MaxHeaderScan bounds how much of a message is held in memory to look for
// Delivered-To headers. A header section longer than this is unusual; the
// rest is streamed unread and loop detection sees only the first part.
const MaxHeaderScan = 1 << 20

// Header is the start of a message, read up to the end of its header
// section (or MaxHeaderScan bytes), and the Delivered-To values found there.
type Header struct {
	// Raw is the bytes read, to be written out before the rest.
	Raw []byte
	// DeliveredTo lists the Delivered-To values, lowercased and trimmed.
	DeliveredTo []string
	// QueueID is the "id" of the topmost Received header: the queue id
	// of the MTA that handed the message over (Postfix's), for the log
	// line that tells one message's story. "" when there is none.
	QueueID string
}

// ReadHeader reads the header section from r. The returned reader yields
// the whole message again (the header bytes, then the rest of r), so the
// caller streams it without a second copy.
func ReadHeader(r io.Reader) (Header, io.Reader, error) {
	return ReadHeaderFrom(bufio.NewReaderSize(r, HeaderBufferSize))
}

// HeaderBufferSize is the size of the buffered reader ReadHeader reads
// through: a header line longer than this is read in pieces.
const HeaderBufferSize = 64 << 10

// ReadHeaderFrom is ReadHeader through br, a reader the caller owns (and
// may reuse once it is done with the returned reader: a daemon keeps a
// pool of them rather than allocating and clearing 64 KB per message);
// br should be HeaderBufferSize long for the same results as ReadHeader.
func ReadHeaderFrom(br *bufio.Reader) (Header, io.Reader, error) {
	var raw bytes.Buffer
	var h Header
	var current []byte // the header field being read, unfolded
	sawReceived := false
	flush := func() {
		if len(current) == 0 {
			return
		}
		name, value, ok := bytes.Cut(current, []byte(":"))
		if ok && strings.EqualFold(string(bytes.TrimSpace(name)), "Delivered-To") {
			h.DeliveredTo = append(h.DeliveredTo, strings.ToLower(strings.TrimSpace(string(value))))
		}
		if ok && !sawReceived && strings.EqualFold(string(bytes.TrimSpace(name)), "Received") {
			sawReceived = true
			h.QueueID = receivedID(string(value))
		}
		current = current[:0]
	}
	for raw.Len() < MaxHeaderScan {
		line, err := br.ReadSlice('\n')
		raw.Write(line)
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 && len(line) > 0 && err == nil {
			break // end of header section
		}
		if len(trimmed) > 0 && (trimmed[0] == ' ' || trimmed[0] == '\t') {
			current = append(current, trimmed...)
		} else {
			flush()
			current = append(current, trimmed...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return h, nil, err
		}
	}
	flush()
	h.Raw = raw.Bytes()
	return h, io.MultiReader(bytes.NewReader(h.Raw), br), nil
}

// Looped reports whether addr is already among the Delivered-To headers.
func (h Header) Looped(addrs ...string) bool {
	for _, d := range h.DeliveredTo {
		for _, a := range addrs {
			if a != "" && strings.EqualFold(strings.Trim(d, "<>"), a) {
				return true
			}
		}
	}
	return false
}

// ReturnPath is the Return-Path header for an envelope sender ("" is the
// null sender of bounces).
func ReturnPath(sender string) string {
	return "Return-Path: <" + Sanitize(sender) + ">\r\n"
}

// DeliveredTo is the Delivered-To header for a final recipient.
func DeliveredTo(rcpt string) string {
	return "Delivered-To: " + Sanitize(rcpt) + "\r\n"
}

// Received makes a Received header (RFC 5321 section 4.4) for a message
// that arrived with protocol proto ("LMTP", "local") from helo/remote, with
// id, for rcpt when there is exactly one.
func Received(helo, remote, by, proto, id, rcpt string, now time.Time) string {
	var b strings.Builder
	b.WriteString("Received:")
	if helo != "" || remote != "" {
		b.WriteString(" from " + Sanitize(helo))
		if remote != "" {
			b.WriteString(" (" + Sanitize(remote) + ")")
		}
		b.WriteString("\r\n\t")
	} else {
		b.WriteString(" ")
	}
	b.WriteString("by " + Sanitize(by) + " (nfsdrop) with " + proto)
	if id != "" {
		b.WriteString(" id " + Sanitize(id))
	}
	if rcpt != "" {
		b.WriteString("\r\n\tfor <" + Sanitize(rcpt) + ">")
	}
	b.WriteString("; " + now.Format(time.RFC1123Z) + "\r\n")
	return b.String()
}

// Sanitize keeps a value from breaking a header: CR, LF and other control
// characters become '?'.
func Sanitize(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// receivedID finds the "id" clause of a Received header (RFC 5321 section
// 4.4), keeping only characters a queue id has.
func receivedID(v string) string {
	f := strings.Fields(strings.SplitN(v, ";", 2)[0])
	for i := 0; i+1 < len(f); i++ {
		if strings.EqualFold(f[i], "id") {
			id := f[i+1]
			if len(id) > 64 {
				return ""
			}
			for _, r := range id {
				if !(r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r == '.' || r == '-' || r == '_') {
					return ""
				}
			}
			return id
		}
	}
	return ""
}
