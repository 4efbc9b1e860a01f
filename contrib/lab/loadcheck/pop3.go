package loadcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// pop3Conn is a small POP3 client: the test must know exactly which reply
// it got to each command (a QUIT without reply is not a QUIT that failed).
type pop3Conn struct {
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

var errNoReply = errors.New("no reply")

func dialPOP3(ctx context.Context, dial DialFunc, addr string, timeout time.Duration) (*pop3Conn, string, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dial(dctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	p := &pop3Conn{c: c, r: bufio.NewReaderSize(c, 64<<10), timeout: timeout}
	greet, err := p.line()
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(greet, "+OK") {
		c.Close()
		return nil, greet, fmt.Errorf("greeting: %q", greet)
	}
	return p, greet, nil
}

func (p *pop3Conn) Close() error { return p.c.Close() }

func (p *pop3Conn) line() (string, error) {
	p.c.SetReadDeadline(time.Now().Add(p.timeout))
	s, err := p.r.ReadString('\n')
	if err != nil {
		if s == "" {
			return "", fmt.Errorf("%w: %v", errNoReply, err)
		}
		return "", err
	}
	return strings.TrimRight(s, "\r\n"), nil
}

// cmd sends a command and reads the status line. err is set when there
// was no reply (connection lost, timeout); a -ERR is a reply, not an err.
func (p *pop3Conn) cmd(format string, args ...any) (string, error) {
	p.c.SetWriteDeadline(time.Now().Add(p.timeout))
	if _, err := fmt.Fprintf(p.c, format+"\r\n", args...); err != nil {
		return "", fmt.Errorf("%w: %v", errNoReply, err)
	}
	return p.line()
}

// multi reads a multi-line response body (after +OK), dot-unstuffed,
// with CRLF line ends.
func (p *pop3Conn) multi() ([]byte, error) {
	var b bytes.Buffer
	for {
		s, err := p.line()
		if err != nil {
			return b.Bytes(), err
		}
		if s == "." {
			return b.Bytes(), nil
		}
		b.WriteString(strings.TrimPrefix(s, "."))
		b.WriteString("\r\n")
	}
}

// uidl lists "n uidl" pairs.
func (p *pop3Conn) uidl() ([]string, error) {
	st, err := p.cmd("UIDL")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(st, "+OK") {
		return nil, fmt.Errorf("UIDL: %s", st)
	}
	body, err := p.multi()
	if err != nil {
		return nil, err
	}
	var out []string
	for i, l := range strings.Split(strings.TrimRight(string(body), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != strconv.Itoa(i+1) {
			return nil, fmt.Errorf("UIDL line %q", l)
		}
		out = append(out, f[1])
	}
	return out, nil
}

// list returns the sizes LIST gives, message 1 first.
func (p *pop3Conn) list() ([]int64, error) {
	st, err := p.cmd("LIST")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(st, "+OK") {
		return nil, fmt.Errorf("LIST: %s", st)
	}
	body, err := p.multi()
	if err != nil {
		return nil, err
	}
	var out []int64
	for i, l := range strings.Split(strings.TrimRight(string(body), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != strconv.Itoa(i+1) {
			return nil, fmt.Errorf("LIST line %q", l)
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("LIST line %q", l)
		}
		out = append(out, n)
	}
	return out, nil
}

func (p *pop3Conn) retr(n int) ([]byte, error) {
	st, err := p.cmd("RETR %d", n)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(st, "+OK") {
		return nil, fmt.Errorf("RETR %d: %s", n, st)
	}
	return p.multi()
}
