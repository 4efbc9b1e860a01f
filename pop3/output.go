package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"time"
)

// connWriter is what a session's bufio.Writer writes to. Each write gets
// its own deadline, so a client that stops reading (its window full in
// the middle of RETR) is dropped after IdleTimeout instead of holding the
// session, and the mailbox lock, forever.
type connWriter struct{ ss *session }

func (cw *connWriter) Write(p []byte) (int, error) {
	ss := cw.ss
	now := time.Now()
	deadline := now.Add(ss.writeTimeout)
	if ss.state == stateAuthorization {
		// A stranger that stops reading must not hold its slot past the
		// login deadline either (plus the time to say goodbye).
		if last := ss.loginBy.Add(farewellTimeout); last.Before(deadline) {
			deadline = later(last, now.Add(farewellTimeout))
		}
	}
	ss.conn.SetWriteDeadline(deadline)
	n, err := ss.conn.Write(p)
	ss.bytesOut += int64(n)
	if err != nil && ss.writeErr == nil {
		ss.writeErr = err
	}
	return n, err
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// w returns the session's output buffer, borrowing one from the pool when
// the session has none: an idle session holds no write buffer.
func (ss *session) w() *bufio.Writer {
	if ss.bw == nil {
		ss.bw = ss.s.writers.Get().(*bufio.Writer)
		ss.bw.Reset(&ss.out)
	}
	return ss.bw
}

// flush sends what is buffered and gives the buffer back.
func (ss *session) flush() error {
	if ss.bw == nil {
		return ss.writeErr
	}
	err := ss.bw.Flush()
	ss.dropWriter()
	return err
}

// dropWriter gives the buffer back without sending what it holds.
func (ss *session) dropWriter() {
	if ss.bw == nil {
		return
	}
	ss.bw.Reset(nil) // the pool must not keep the session alive
	ss.s.writers.Put(ss.bw)
	ss.bw = nil
}

// line writes one response line; s has no CRLF.
func (ss *session) line(s string) {
	w := ss.w()
	w.WriteString(s)
	w.WriteString("\r\n")
}

// lines writes one response line for each of ls.
func (ss *session) lines(ls ...string) {
	for _, s := range ls {
		ss.line(s)
	}
}

// numLine writes "<prefix><n> <v>\r\n" without allocating: the lines of
// LIST, and STAT.
func (ss *session) numLine(prefix string, n int, v int64) {
	w := ss.w()
	b := numbered(w.AvailableBuffer(), prefix, n)
	b = strconv.AppendInt(b, v, 10)
	b = append(b, '\r', '\n')
	w.Write(b)
}

// numbered appends "<prefix><n> ", the start of a listing line, to b.
func numbered(b []byte, prefix string, n int) []byte {
	b = append(b, prefix...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, ' ')
}

// uidLine writes "<prefix><n> <uid>\r\n", the lines of UIDL.
func (ss *session) uidLine(prefix string, n int, uid string) {
	w := ss.w()
	b := numbered(w.AvailableBuffer(), prefix, n)
	b = append(b, uid...)
	b = append(b, '\r', '\n')
	w.Write(b)
}

// errTopDone stops the copy of a message once TOP has sent its lines.
var errTopDone = errors.New("pop3: TOP line count reached")

// readError marks a failure reading the message, as opposed to sending it.
type readError struct{ err error }

func (e readError) Error() string { return "read message: " + e.err.Error() }
func (e readError) Unwrap() error { return e.err }

// onlyReader hides an *os.File's WriteTo, so that io.CopyBuffer uses the
// pooled buffer instead of allocating one of its own.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = readError{err}
	}
	return n, err
}

// sendMessage writes a message as the body of a multi-line response (RFC
// 1939 section 3): bare LF becomes CRLF, a line starting with "." gets
// another one in front, a last line without its line end gets CRLF, and
// the ".\r\n" terminator follows. top < 0 sends it all; otherwise the
// header, the blank line and top lines of the body (TOP, RFC 1939 section
// 7). A readError means the message could not be read after the +OK line
// went out: the caller must close the connection without the terminator,
// so the client does not take half a message for all of it.
func (ss *session) sendMessage(r io.Reader, top int64) error {
	bufp := ss.s.copyBufs.Get().(*[]byte)
	defer ss.s.copyBufs.Put(bufp)
	bw := &bodyWriter{w: ss.w(), lineStart: true, top: top >= 0, inHeader: true, bodyLeft: top}
	_, err := io.CopyBuffer(bw, onlyReader{r}, *bufp)
	if err != nil && err != errTopDone {
		return err
	}
	w := ss.w()
	if !bw.lineStart {
		w.WriteString("\r\n")
	}
	_, err = w.WriteString(".\r\n")
	return err
}

// bodyWriter does the conversions of sendMessage on a stream, whatever
// the sizes of the pieces it is given: a CRLF or a line may be split
// between two writes.
type bodyWriter struct {
	w         *bufio.Writer
	lineStart bool // the next byte starts a line
	prevCR    bool // the last byte written was CR
	lineLen   int  // bytes of the current line so far

	top      bool  // stop after the header and bodyLeft body lines
	inHeader bool  // no blank line seen yet
	bodyLeft int64 // body lines still to send, when top
}

func (b *bodyWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if b.lineStart {
			if p[0] == '.' {
				b.w.WriteByte('.') // byte-stuffing, RFC 1939 section 3
			}
			b.lineStart = false
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			b.w.Write(p)
			b.lineLen += len(p)
			b.prevCR = p[len(p)-1] == '\r'
			break
		}
		cr := b.prevCR
		if i > 0 {
			cr = p[i-1] == '\r'
		}
		b.w.Write(p[:i])
		b.lineLen += i
		if !cr {
			b.w.WriteByte('\r')
		}
		b.w.WriteByte('\n')
		empty := b.lineLen == 0 || (cr && b.lineLen == 1)
		b.lineStart, b.prevCR, b.lineLen = true, false, 0
		p = p[i+1:]
		if b.top {
			if b.inHeader {
				if empty {
					b.inHeader = false
					if b.bodyLeft == 0 {
						return n, errTopDone
					}
				}
			} else if b.bodyLeft--; b.bodyLeft <= 0 {
				return n, errTopDone
			}
		}
	}
	// bufio.Writer keeps its first error and returns it from every later
	// call, even an empty write: one check covers all the writes above.
	if _, err := b.w.Write(nil); err != nil {
		return 0, err
	}
	return n, nil
}
