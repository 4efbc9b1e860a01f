package testkit

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// DefaultTimeout bounds each read and write of a LineConn, so a server
// that hangs fails the test instead of stalling it.
const DefaultTimeout = 10 * time.Second

// LineConn is a raw client for line protocols (POP3, LMTP, SMTP): lines
// in, lines out, every failure fails the test. Tests that need the bytes
// themselves use C and R.
type LineConn struct {
	T testing.TB
	C net.Conn
	R *bufio.Reader
	// Timeout bounds each read and write (DefaultTimeout when zero).
	Timeout time.Duration
}

// Dial connects to addr; the connection is closed when the test ends.
func Dial(t testing.TB, network, addr string) *LineConn {
	t.Helper()
	return DialFrom(t, network, addr, nil)
}

// DialFrom connects to addr from the local address (nil: any).
func DialFrom(t testing.TB, network, addr string, local net.Addr) *LineConn {
	t.Helper()
	d := net.Dialer{Timeout: DefaultTimeout, LocalAddr: local}
	c, err := d.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return NewLineConn(t, c)
}

// NewLineConn wraps an open connection.
func NewLineConn(t testing.TB, c net.Conn) *LineConn {
	return &LineConn{T: t, C: c, R: bufio.NewReader(c)}
}

func (c *LineConn) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// Send writes the lines, each with CRLF, in one write (so several
// commands are pipelined).
func (c *LineConn) Send(lines ...string) {
	c.T.Helper()
	c.Raw(strings.Join(lines, "\r\n") + "\r\n")
}

// Raw writes s as it is.
func (c *LineConn) Raw(s string) {
	c.T.Helper()
	c.C.SetWriteDeadline(time.Now().Add(c.timeout()))
	if _, err := io.WriteString(c.C, s); err != nil {
		c.T.Fatalf("write %q: %v", s, err)
	}
}

// Cmd sends one line and returns the first line of the answer.
func (c *LineConn) Cmd(line string) string {
	c.T.Helper()
	c.Send(line)
	return c.Line()
}

// read reads one line with its end, under the timeout.
func (c *LineConn) read() (string, error) {
	c.C.SetReadDeadline(time.Now().Add(c.timeout()))
	return c.R.ReadString('\n')
}

// Line reads one line and returns it without CRLF; a line ending in a
// bare LF fails the test (both protocols require CRLF).
func (c *LineConn) Line() string {
	c.T.Helper()
	s, err := c.read()
	if err != nil {
		c.T.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.T.Fatalf("line %q does not end in CRLF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// Expect reads a line and checks that it starts with prefix.
func (c *LineConn) Expect(prefix string) string {
	c.T.Helper()
	s := c.Line()
	if !strings.HasPrefix(s, prefix) {
		c.T.Fatalf("got %q, want %q...", s, prefix)
	}
	return s
}

// Multi reads the lines of a POP3 multi-line response after its first
// line, up to the terminating ".", with the byte-stuffing undone.
func (c *LineConn) Multi() []string {
	c.T.Helper()
	var out []string
	for {
		s := c.Line()
		if s == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(s, "."))
	}
}

// Body reads a POP3 multi-line response's data as sent (stuffed, CRLF)
// up to and without the terminating ".\r\n".
func (c *LineConn) Body() string {
	c.T.Helper()
	var b strings.Builder
	for {
		s, err := c.read()
		if err != nil {
			c.T.Fatalf("read: %v", err)
		}
		if s == ".\r\n" {
			return b.String()
		}
		b.WriteString(s)
	}
}

// Reply reads one SMTP/LMTP reply, all its "250-" continuation lines,
// and returns its last line; "" when the server closed the connection
// before a reply started. Lines of one reply with different codes fail
// the test (RFC 5321 4.2.1).
func (c *LineConn) Reply() string {
	c.T.Helper()
	var code string
	for {
		s, err := c.read()
		if err != nil {
			if s != "" {
				c.T.Fatalf("read: %v after %q", err, s)
			}
			return ""
		}
		s = strings.TrimRight(s, "\r\n")
		if code != "" && !strings.HasPrefix(s, code) {
			c.T.Fatalf("reply line %q does not continue code %s", s, code)
		}
		if len(s) < 4 || s[3] != '-' {
			return s
		}
		code = s[:3]
	}
}

// ExpectReply reads one SMTP/LMTP reply and checks that its last line
// starts with prefix.
func (c *LineConn) ExpectReply(prefix string) string {
	c.T.Helper()
	s := c.Reply()
	if !strings.HasPrefix(s, prefix) {
		c.T.Fatalf("got reply %q, want %q...", s, prefix)
	}
	return s
}

// ExpectEOF checks that the server closed the connection with nothing
// more to say (a timeout means it is still open).
func (c *LineConn) ExpectEOF() {
	c.T.Helper()
	s, err := c.read()
	if err == nil || s != "" {
		c.T.Fatalf("got %q, %v; want the connection closed", s, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.T.Fatal("connection still open")
	}
}

// StartTLS runs a TLS handshake on the connection (after STLS/STARTTLS,
// or at once for implicit TLS); nothing may be buffered unread.
func (c *LineConn) StartTLS(cfg *tls.Config) {
	c.T.Helper()
	if c.R.Buffered() != 0 {
		c.T.Fatalf("%d bytes unread before TLS", c.R.Buffered())
	}
	tc := tls.Client(c.C, cfg)
	tc.SetDeadline(time.Now().Add(c.timeout()))
	if err := tc.Handshake(); err != nil {
		c.T.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	c.C = tc
	c.R = bufio.NewReader(tc)
}

// Close closes the connection.
func (c *LineConn) Close() error { return c.C.Close() }
