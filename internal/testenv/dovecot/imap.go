package dovecot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Client is a small raw IMAP4rev1 client, enough to drive Dovecot the way
// a mail user agent does to a Maildir: SELECT (Dovecot moves new/ to cur/
// and writes dovecot-uidlist), STORE of flags (renames cur/ files),
// EXPUNGE (unlinks them). Every command waits for its tagged answer; a
// NO or BAD is an error naming the command.
type Client struct {
	c       net.Conn
	r       *bufio.Reader
	tag     int
	timeout time.Duration
}

// Dial connects to addr and reads the greeting; see NewClient.
func Dial(ctx context.Context, addr string, timeout time.Duration) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return NewClient(c, timeout)
}

// NewClient reads the greeting on an established connection (closing it
// on failure). timeout bounds each command's answer (0: 30 seconds).
func NewClient(c net.Conn, timeout time.Duration) (*Client, error) {
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	cl := &Client{c: c, r: bufio.NewReaderSize(c, 64<<10), timeout: timeout}
	c.SetReadDeadline(time.Now().Add(timeout))
	greet, err := cl.readResponse()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("IMAP greeting: %w", err)
	}
	if !strings.HasPrefix(greet, "* OK") {
		c.Close()
		return nil, fmt.Errorf("IMAP greeting %q", greet)
	}
	return cl, nil
}

// Close closes the connection without LOGOUT.
func (cl *Client) Close() error { return cl.c.Close() }

// readResponse reads one response line with its literals ({n} followed
// by n octets) inlined.
func (cl *Client) readResponse() (string, error) {
	var b strings.Builder
	for {
		line, err := cl.r.ReadString('\n')
		if err != nil {
			return b.String() + line, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		b.WriteString(line)
		n, ok := literalSize(line)
		if !ok {
			return b.String(), nil
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(cl.r, lit); err != nil {
			return b.String(), err
		}
		b.WriteString("\r\n")
		b.Write(lit)
	}
}

var literalRE = regexp.MustCompile(`\{(\d+)\}$`)

func literalSize(line string) (int, bool) {
	m := literalRE.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// Command sends one command (without tag) and returns the untagged
// responses before its tagged OK. A tagged NO or BAD is an error.
func (cl *Client) Command(format string, args ...any) ([]string, error) {
	cl.tag++
	tag := "a" + strconv.Itoa(cl.tag)
	cmd := fmt.Sprintf(format, args...)
	cl.c.SetWriteDeadline(time.Now().Add(cl.timeout))
	if _, err := fmt.Fprintf(cl.c, "%s %s\r\n", tag, cmd); err != nil {
		return nil, fmt.Errorf("IMAP %s: %w", verb(cmd), err)
	}
	cl.c.SetReadDeadline(time.Now().Add(cl.timeout))
	var untagged []string
	for {
		resp, err := cl.readResponse()
		if err != nil {
			return untagged, fmt.Errorf("IMAP %s: %w", verb(cmd), err)
		}
		rest, ok := strings.CutPrefix(resp, tag+" ")
		if !ok {
			untagged = append(untagged, resp)
			continue
		}
		if !strings.HasPrefix(rest, "OK") {
			return untagged, &StatusError{Command: verb(cmd), Reply: rest}
		}
		return untagged, nil
	}
}

// StatusError is a tagged NO or BAD: the server refused the command, the
// connection is fine.
type StatusError struct {
	// Command is the command's name, Reply the tagged answer without
	// the tag ("NO [NONEXISTENT] ...").
	Command, Reply string
}

func (e *StatusError) Error() string { return "IMAP " + e.Command + ": " + e.Reply }

// verb names a command in errors without its arguments (LOGIN's password).
func verb(cmd string) string {
	f := strings.Fields(cmd)
	switch {
	case len(f) == 0:
		return ""
	case strings.EqualFold(f[0], "UID") && len(f) > 1:
		return f[0] + " " + f[1]
	default:
		return f[0]
	}
}

// Login sends LOGIN.
func (cl *Client) Login(user, pass string) error {
	_, err := cl.Command("LOGIN %s %s", quote(user), quote(pass))
	return err
}

// Logout sends LOGOUT and closes the connection.
func (cl *Client) Logout() error {
	_, err := cl.Command("LOGOUT")
	cl.c.Close()
	return err
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Mailbox is what SELECT reports.
type Mailbox struct {
	Exists      int
	UIDValidity uint32
	UIDNext     uint32
}

var (
	existsRE      = regexp.MustCompile(`^\* (\d+) EXISTS`)
	uidValidityRE = regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`)
	uidNextRE     = regexp.MustCompile(`\[UIDNEXT (\d+)\]`)
)

// Select selects a mailbox read-write: Dovecot moves the messages in new/
// to cur/ and gives every message a UID in dovecot-uidlist.
func (cl *Client) Select(mailbox string) (Mailbox, error) {
	resp, err := cl.Command("SELECT %s", quote(mailbox))
	if err != nil {
		return Mailbox{}, err
	}
	var mb Mailbox
	for _, r := range resp {
		if m := existsRE.FindStringSubmatch(r); m != nil {
			mb.Exists, _ = strconv.Atoi(m[1])
		}
		if m := uidValidityRE.FindStringSubmatch(r); m != nil {
			v, _ := strconv.ParseUint(m[1], 10, 32)
			mb.UIDValidity = uint32(v)
		}
		if m := uidNextRE.FindStringSubmatch(r); m != nil {
			v, _ := strconv.ParseUint(m[1], 10, 32)
			mb.UIDNext = uint32(v)
		}
	}
	if mb.UIDValidity == 0 {
		return mb, fmt.Errorf("IMAP SELECT %s: no UIDVALIDITY in %q", mailbox, resp)
	}
	return mb, nil
}

// Noop sends NOOP: Dovecot syncs the Maildir (new mail moves to cur/).
func (cl *Client) Noop() error {
	_, err := cl.Command("NOOP")
	return err
}

// Message is one message of the selected mailbox as FETCH reports it.
type Message struct {
	UID   uint32
	Flags []string
	Size  int64
	// MessageID is the Message-ID header's value, Header the header
	// fields Fetch asked for, as sent.
	MessageID string
	Header    string
}

var (
	fetchUIDRE   = regexp.MustCompile(`\bUID (\d+)`)
	fetchFlagsRE = regexp.MustCompile(`\bFLAGS \(([^)]*)\)`)
	fetchSizeRE  = regexp.MustCompile(`\bRFC822\.SIZE (\d+)`)
	messageIDRE  = regexp.MustCompile(`(?im)^Message-ID:\s*(\S+)`)
)

// Fetch lists every message of the selected mailbox: UID, flags, size and
// the header fields named (Message-ID is always among them), without
// setting \Seen.
func (cl *Client) Fetch(fields ...string) ([]Message, error) {
	fields = append([]string{"Message-ID"}, fields...)
	resp, err := cl.Command("UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (%s)])", strings.Join(fields, " "))
	if err != nil {
		return nil, err
	}
	var out []Message
	for _, r := range resp {
		// Unsolicited FETCH responses (flag changes another session
		// made) carry no header: only the answers to this command do.
		if !strings.Contains(r, " FETCH (") || !strings.Contains(r, "BODY[HEADER.FIELDS") {
			continue
		}
		m := Message{}
		if s := fetchUIDRE.FindStringSubmatch(r); s != nil {
			v, _ := strconv.ParseUint(s[1], 10, 32)
			m.UID = uint32(v)
		}
		if s := fetchFlagsRE.FindStringSubmatch(r); s != nil {
			m.Flags = strings.Fields(s[1])
		}
		if s := fetchSizeRE.FindStringSubmatch(r); s != nil {
			m.Size, _ = strconv.ParseInt(s[1], 10, 64)
		}
		if _, lit, ok := strings.Cut(r, "\r\n"); ok {
			m.Header = lit
			if s := messageIDRE.FindStringSubmatch(lit); s != nil {
				m.MessageID = s[1]
			}
		}
		if m.UID == 0 {
			return out, fmt.Errorf("IMAP UID FETCH: no UID in %q", r)
		}
		out = append(out, m)
	}
	return out, nil
}

// HeaderValue returns the value of header field name in m.Header ("" if
// absent).
func (m Message) HeaderValue(name string) string {
	for _, line := range strings.Split(m.Header, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Store changes the flags of the message with uid: op is "+FLAGS" or
// "-FLAGS", flags like `\Seen \Flagged`. Dovecot renames the file in cur/.
func (cl *Client) Store(uid uint32, op, flags string) error {
	_, err := cl.Command("UID STORE %d %s.SILENT (%s)", uid, op, flags)
	return err
}

// Expunge removes the message with uid (and only it: UID EXPUNGE,
// RFC 4315). It is an error when the server did not report it expunged:
// the message was already gone.
func (cl *Client) Expunge(uid uint32) error {
	if err := cl.Store(uid, "+FLAGS", `\Deleted`); err != nil {
		return err
	}
	resp, err := cl.Command("UID EXPUNGE %d", uid)
	if err != nil {
		return err
	}
	for _, r := range resp {
		if strings.HasSuffix(r, " EXPUNGE") {
			return nil
		}
	}
	return ErrNotExpunged
}

// ErrNotExpunged says UID EXPUNGE answered OK without expunging anything.
var ErrNotExpunged = errors.New("IMAP UID EXPUNGE: nothing expunged")

// DovecotUIDL is the POP3 UIDL Dovecot 2.3 gives a message with its
// default pop3_uidl_format "%08Xu%08Xv".
func DovecotUIDL(uid, uidValidity uint32) string {
	return fmt.Sprintf("%08X%08X", uid, uidValidity)
}
