package pop3

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type state uint8

const (
	stateAuthorization state = iota // RFC 1939 section 4
	stateTransaction                // RFC 1939 section 5
)

// Message flags, one byte per message of the listing.
const (
	flagDeleted   = 1 << iota // DELE, until RSET
	flagRetrieved             // RETR sent it all (TOP does not count)
)

// Ways a session ends, as logged ("end").
const (
	endQuit     = "quit"
	endEOF      = "eof"
	endTimeout  = "timeout"
	endError    = "error"
	endShutdown = "shutdown"
	endAuthFail = "auth-fail"
	// endLoginTimeout: not logged in by Options.LoginTimeout.
	endLoginTimeout = "login-timeout"
	// endEvicted: dropped, not logged in, to make room for a newcomer
	// on a full server.
	endEvicted = "evicted"
)

// Errors that end a session.
var (
	errQuit           = errors.New("quit")
	errAuthFailures   = errors.New("too many authentication failures")
	errProtocolErrors = errors.New("too many protocol errors")
	errLineTooLong    = errors.New("line too long")
	errProxyHeader    = errors.New("PROXY header from a peer not in proxy networks")
	errLoginTimeout   = errors.New("not logged in within the login timeout")
	errShuttingDown   = errors.New("server shutting down")
)

// replyShuttingDown ends a session waiting for a command when the server
// stops; the client tries again (on another machine, behind a balancer).
const replyShuttingDown = "-ERR [SYS/TEMP] server shutting down"

// session is one POP3 connection. Only its own goroutine touches it.
type session struct {
	s         *Server
	id        string
	conn      net.Conn // raw, or TLS over raw after STLS / on the POP3S port
	remote    netip.AddrPort
	remoteStr string
	via       string // the load balancer's address, when a PROXY header gave remote
	tls       bool
	start     time.Time
	slot      *slot     // the server's accounting of this session
	loginBy   time.Time // the login deadline (Options.LoginTimeout)

	r            *bufio.Reader // MaxLineLength: no line can make it grow
	bw           *bufio.Writer // borrowed from s.writers while answering; nil when idle
	out          connWriter
	writeTimeout time.Duration
	writeErr     error

	state       state
	pendingUser string // USER given, PASS awaited
	tryUser     string // the user of the login in progress, for the log
	user        string // logged in as

	mbox      Mailbox
	flags     []uint8
	count     int   // messages not deleted
	size      int64 // their octets
	commitErr error

	authFailures   int
	protocolErrors int
	retrieved      int
	deleted        int
	bytesOut       int64
}

func newSession(s *Server, c net.Conn, sl *slot, remote netip.AddrPort, remoteStr, via string) *session {
	var id [10]byte
	rand.Read(id[:])
	ss := &session{
		s:            s,
		id:           strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(id[:])),
		conn:         c,
		remote:       remote,
		remoteStr:    remoteStr,
		via:          via,
		start:        time.Now(),
		slot:         sl,
		r:            bufio.NewReaderSize(c, s.opts.MaxLineLength),
		writeTimeout: s.opts.IdleTimeout,
	}
	ss.loginBy = ss.start.Add(s.opts.LoginTimeout)
	ss.out.ss = ss
	return ss
}

// serve runs the session and always ends it the same way: no QUIT, no
// commit (RFC 1939 section 6), one log line.
func (ss *session) serve(implicitTLS bool) {
	how, err := endError, error(nil)
	defer func() {
		if p := recover(); p != nil {
			// A bug must cost one session, not the server and every other
			// session with it.
			ss.s.log.Error("pop3 session panic", "session", ss.id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if ss.bw != nil {
				ss.bw.Reset(&ss.out) // drop a half-written response
			}
			ss.line(replyInternal)
			how, err = endError, fmt.Errorf("panic: %v", p)
		}
		ss.finish(how, err)
	}()
	how, err = ss.run(implicitTLS)
}

func (ss *session) run(implicitTLS bool) (string, error) {
	if implicitTLS {
		if err := ss.startTLS(ss.s.opts.TLSConfig()); err != nil {
			return ss.ended(err)
		}
	}
	// No APOP timestamp in the greeting: APOP is not offered (RFC 1939
	// section 7 makes the timestamp the sign that it is).
	ss.line("+OK " + ss.s.opts.Hostname + " nfsdrop POP3 ready")
	for {
		// PIPELINING (RFC 2449 section 6.6): answers to commands that
		// arrived together go out together, in one write, instead of one
		// packet per answer. Flush only when no whole command is waiting.
		if !ss.lineBuffered() {
			if err := ss.flush(); err != nil {
				return ss.ended(err)
			}
		}
		line, err := ss.readLine()
		if err != nil {
			return ss.ended(err)
		}
		if err := ss.dispatch(line); err != nil {
			return ss.ended(err)
		}
	}
}

// ended says how the session ended, for the log, from the error that
// ended it; the error is returned only when it is worth logging.
func (ss *session) ended(err error) (string, error) {
	switch {
	case err == errQuit:
		return endQuit, ss.commitErr
	case err == errAuthFailures:
		return endAuthFail, nil
	case err == errLoginTimeout:
		return endLoginTimeout, nil
	case err == errShuttingDown, ss.s.forced.Load():
		return endShutdown, nil
	case ss.slot.evicted.Load():
		return endEvicted, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return endTimeout, nil
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return endEOF, nil
	}
	return endError, err
}

// finish sends what is still buffered (a last -ERR), releases the
// mailbox without changing it unless QUIT committed, closes the
// connection and logs the session.
func (ss *session) finish(how string, err error) {
	if ss.writeErr == nil && !ss.s.forced.Load() {
		ss.writeTimeout = min(ss.writeTimeout, farewellTimeout)
		ss.flush()
	}
	ss.dropWriter()
	if ss.mbox != nil {
		ss.closeMailbox()
	}
	ss.conn.Close()

	attrs := []any{
		"session", ss.id, "remote", ss.remoteStr, "tls", ss.tls,
		"retrieved", ss.retrieved, "deleted", ss.deleted, "bytes", ss.bytesOut,
		"duration", time.Since(ss.start).Round(time.Millisecond), "end", how,
	}
	if ss.user != "" {
		attrs = append(attrs, "user", ss.user)
	}
	if ss.via != "" {
		attrs = append(attrs, "via", ss.via)
	}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	ss.s.log.Info("pop3 session", attrs...)
	ss.s.opts.Observer.SessionEnded(how, ss.retrieved, ss.deleted)
}

// closeMailbox releases the lock without deleting anything. It runs after
// a panic too, so it catches its own.
func (ss *session) closeMailbox() {
	mb := ss.mbox
	ss.mbox = nil
	defer func() {
		if p := recover(); p != nil {
			ss.s.log.Error("pop3 mailbox close panic", "session", ss.id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		}
	}()
	if err := mb.Close(); err != nil {
		ss.s.log.Warn("pop3 mailbox close failed", "session", ss.id, "user", ss.user, "err", err.Error())
	}
}

// lineBuffered reports whether a whole command line is already read.
func (ss *session) lineBuffered() bool {
	b, _ := ss.r.Peek(ss.r.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// readLine reads one line (a command, or a SASL response) under the
// inactivity timer, and returns it without its line end. The slice is
// valid until the next read. A line longer than MaxLineLength ends the
// session: after it, nothing tells where the next command starts.
func (ss *session) readLine() ([]byte, error) {
	now := time.Now()
	deadline := now.Add(ss.s.opts.IdleTimeout)
	if ss.state == stateAuthorization {
		// Checked before every line, not only by the read deadline:
		// pipelined commands already buffered must not outlive it.
		if !now.Before(ss.loginBy) {
			ss.line(replyLoginTimeout)
			return nil, errLoginTimeout
		}
		if ss.loginBy.Before(deadline) {
			deadline = ss.loginBy
		}
	}
	ss.conn.SetReadDeadline(deadline)
	// Checked after setting the deadline: Shutdown marks the server
	// closing, then moves every connection's read deadline to now; either
	// this sees closing, or Shutdown's deadline replaced ours and the read
	// below returns at once. Commands the client already sent (pipelined,
	// perhaps ending with QUIT) are still carried out: they need no read.
	if ss.s.isClosing() && !ss.lineBuffered() {
		ss.line(replyShuttingDown)
		return nil, errShuttingDown
	}
	line, err := ss.r.ReadSlice('\n')
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded) && ss.s.isClosing():
			ss.line(replyShuttingDown)
			return nil, errShuttingDown
		case err == bufio.ErrBufferFull:
			ss.line("-ERR line too long")
			return nil, errLineTooLong
		case errors.Is(err, os.ErrDeadlineExceeded) && ss.state == stateAuthorization && !time.Now().Before(ss.loginBy):
			ss.line(replyLoginTimeout)
			return nil, errLoginTimeout
		case errors.Is(err, os.ErrDeadlineExceeded):
			// RFC 1939 section 3 only asks to close; a client that is
			// still there at least learns why.
			ss.line("-ERR [SYS/TEMP] idle timeout")
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// fail answers -ERR to a command that is wrong in itself, and ends the
// session after maxProtocolErrors of them.
func (ss *session) fail(msg string) error {
	ss.line("-ERR " + msg)
	if ss.protocolErrors++; ss.protocolErrors >= maxProtocolErrors {
		return errProtocolErrors
	}
	return nil
}

func (ss *session) dispatch(line []byte) error {
	cmd, err := parseCommand(line)
	if err != nil {
		return ss.fail(err.Error())
	}
	if cmd.verb == "PROXY" {
		// A PROXY v1 header from a peer that is not a configured load
		// balancer: it could name any address, so it is not believed,
		// and a client that sends one is misconfigured or lying.
		ss.s.log.Warn("pop3 PROXY header refused: peer not in proxy networks", "session", ss.id, "remote", ss.remoteStr)
		ss.line("-ERR PROXY header not accepted from this address")
		return errProxyHeader
	}
	c, ok := commands[cmd.verb]
	switch {
	case ok && c.validIn&(1<<ss.state) != 0:
		if c.args != anyArgs && len(cmd.args) != c.args {
			return ss.fail("syntax error")
		}
		return c.run(ss, cmd)
	case ss.state == stateAuthorization:
		return ss.fail("command not valid before login")
	}
	return ss.fail("command not valid after login")
}

// commandSpec is where a command is valid, how many arguments it takes,
// and what runs it.
type commandSpec struct {
	validIn uint8 // a set of states: bit 1<<state
	args    int   // exactly this many arguments, or anyArgs: run checks them
	run     func(*session, command) error
}

const (
	beforeLogin = 1 << stateAuthorization
	afterLogin  = 1 << stateTransaction
	anyArgs     = -1
)

// commands are the commands of RFC 1939 sections 4 and 5 (CAPA: RFC
// 2449). It is a table, read only, so that which command runs where, and
// with how many arguments, is said once. Those with anyArgs check their
// arguments themselves: after what they refuse first (USER, STLS), or
// because the count varies (LIST, UIDL, AUTH) or spaces are part of the
// argument (PASS).
var commands = map[string]commandSpec{
	"CAPA": {beforeLogin | afterLogin, 0, (*session).capa},
	"QUIT": {beforeLogin | afterLogin, 0, (*session).quit},
	"USER": {beforeLogin, anyArgs, (*session).userCmd},
	"PASS": {beforeLogin, anyArgs, (*session).passCmd},
	"AUTH": {beforeLogin, anyArgs, (*session).authCmd},
	"STLS": {beforeLogin, anyArgs, (*session).stls},
	"STAT": {afterLogin, 0, (*session).stat},
	"LIST": {afterLogin, anyArgs, (*session).list},
	"UIDL": {afterLogin, anyArgs, (*session).uidl},
	"RETR": {afterLogin, 1, (*session).retr},
	"TOP":  {afterLogin, 2, (*session).top},
	"DELE": {afterLogin, 1, (*session).dele},
	"RSET": {afterLogin, 0, (*session).rset},
	"NOOP": {afterLogin, 0, (*session).noop},
}

// noop is NOOP (RFC 1939 section 5).
func (ss *session) noop(command) error {
	ss.line("+OK")
	return nil
}

// capa lists the capabilities (RFC 2449 section 5). What depends on the
// state (USER, SASL, STLS) is listed only before login, and the password
// mechanisms only where a password may be sent (RFC 2595 section 6): a
// client that sees no USER and no SASL but STLS knows to start TLS.
func (ss *session) capa(command) error {
	ss.line("+OK Capability list follows")
	ss.lines("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")
	if ss.state == stateAuthorization {
		if ss.plaintextAllowed() {
			ss.lines("USER", "SASL PLAIN LOGIN")
		}
		if ss.stlsOffered() {
			ss.line("STLS")
		}
	}
	ss.lines("IMPLEMENTATION nfsdrop", ".")
	return nil
}

// quit ends the session. After login it is the UPDATE state (RFC 1939
// section 6): the deletions are committed, and the reply says whether
// they were. Commands pipelined after QUIT are not read.
func (ss *session) quit(command) error {
	if ss.state == stateAuthorization {
		ss.line("+OK " + ss.s.opts.Hostname + " bye")
		return errQuit
	}
	var deleted, retrieved []int
	for i, f := range ss.flags {
		switch {
		case f&flagDeleted != 0:
			deleted = append(deleted, i)
		case f&flagRetrieved != 0:
			// A message being deleted is not also "retrieved": marking
			// it seen would touch a file that is going away.
			retrieved = append(retrieved, i)
		}
	}
	mb := ss.mbox
	ss.mbox = nil // Commit releases the lock, whatever it returns
	if err := mb.Commit(deleted, retrieved); err != nil {
		ss.commitErr = fmt.Errorf("commit: %w", err)
		ss.line("-ERR [SYS/TEMP] some deleted messages not removed")
		return errQuit
	}
	ss.deleted = len(deleted)
	ss.line("+OK " + ss.s.opts.Hostname + " bye (" + strconv.Itoa(len(deleted)) + " messages deleted)")
	return errQuit
}

// countAll sets the maildrop's count and size to the whole listing (at
// login, and when RSET undeletes everything).
func (ss *session) countAll() {
	ss.count, ss.size = ss.mbox.Len(), 0
	for i := range ss.count {
		ss.size += ss.mbox.Message(i).Size
	}
}

// enterTransaction takes the listing made at login (RFC 1939 section 5).
func (ss *session) enterTransaction(mb Mailbox) {
	ss.mbox = mb
	ss.flags = make([]uint8, mb.Len())
	ss.countAll()
	ss.state = stateTransaction
	ss.s.loggedIn(ss.slot)
	ss.user = ss.tryUser
	ss.pendingUser = ""
}

// msgArg parses a message number argument: a message that exists and is
// not marked deleted (RFC 1939 section 5).
func (ss *session) msgArg(s string) (int, bool) {
	i, ok := parseMsgNum(s, ss.mbox.Len())
	if !ok || ss.flags[i]&flagDeleted != 0 {
		return 0, false
	}
	return i, true
}

func (ss *session) stat(command) error {
	ss.numLine("+OK ", ss.count, ss.size)
	return nil
}

// list is LIST (RFC 1939 section 5): message sizes.
func (ss *session) list(cmd command) error {
	header := "+OK " + strconv.Itoa(ss.count) + " messages (" + strconv.FormatInt(ss.size, 10) + " octets)"
	return ss.scanListing(cmd, header, func(prefix string, i int) { ss.numLine(prefix, i+1, ss.mbox.Message(i).Size) })
}

// uidl is UIDL (RFC 1939 section 7): unique-id listings.
func (ss *session) uidl(cmd command) error {
	return ss.scanListing(cmd, "+OK unique-id listing follows", func(prefix string, i int) { ss.uidLine(prefix, i+1, ss.mbox.Message(i).UID) })
}

// scanListing answers LIST or UIDL: with no argument, a multi-line answer
// with an entry for every message not marked deleted; with a message
// number, that message's entry on the +OK line.
func (ss *session) scanListing(cmd command, header string, entry func(prefix string, i int)) error {
	switch len(cmd.args) {
	case 0:
		ss.line(header)
		for i := range ss.mbox.Len() {
			if ss.flags[i]&flagDeleted == 0 {
				entry("", i)
			}
		}
		ss.line(".")
		return nil
	case 1:
		i, ok := ss.msgArg(cmd.args[0])
		if !ok {
			return ss.fail(replyNoSuchMsg)
		}
		entry("+OK ", i)
		return nil
	}
	return ss.fail("syntax error")
}

func (ss *session) dele(cmd command) error {
	i, ok := ss.msgArg(cmd.args[0])
	if !ok {
		return ss.fail(replyNoSuchMsg)
	}
	ss.flags[i] |= flagDeleted
	ss.count--
	ss.size -= ss.mbox.Message(i).Size
	ss.line("+OK message " + strconv.Itoa(i+1) + " deleted")
	return nil
}

func (ss *session) rset(command) error {
	for i := range ss.flags {
		ss.flags[i] &^= flagDeleted
	}
	ss.countAll()
	ss.line("+OK maildrop has " + strconv.Itoa(ss.count) + " messages (" + strconv.FormatInt(ss.size, 10) + " octets)")
	return nil
}

func (ss *session) retr(cmd command) error {
	i, ok := ss.msgArg(cmd.args[0])
	if !ok {
		return ss.fail(replyNoSuchMsg)
	}
	return ss.send(i, "+OK "+strconv.FormatInt(ss.mbox.Message(i).Size, 10)+" octets", -1)
}

// top is TOP n m (RFC 1939 section 7, RFC 2449 section 6.1).
func (ss *session) top(cmd command) error {
	i, ok := ss.msgArg(cmd.args[0])
	if !ok {
		return ss.fail(replyNoSuchMsg)
	}
	n, ok := parseLineCount(cmd.args[1])
	if !ok {
		return ss.fail("invalid line count")
	}
	return ss.send(i, "+OK top of message follows", n)
}

// send answers RETR (top < 0) or TOP with message i.
func (ss *session) send(i int, first string, top int64) error {
	rc, err := ss.mbox.Open(i)
	if err != nil {
		ss.s.log.Warn("pop3 message open failed", "session", ss.id, "user", ss.user, "message", i+1, "err", err.Error())
		ss.line(errReply(err))
		return nil
	}
	defer rc.Close()
	ss.line(first)
	if err := ss.sendMessage(rc, top); err != nil {
		var re readError
		if errors.As(err, &re) {
			ss.s.log.Warn("pop3 message read failed", "session", ss.id, "user", ss.user, "message", i+1, "err", re.err.Error())
			ss.dropWriter() // no terminator: the client must not take it for whole
		}
		return err
	}
	if top < 0 && ss.flags[i]&flagRetrieved == 0 {
		ss.flags[i] |= flagRetrieved
		ss.retrieved++
	}
	return nil
}

// startTLS runs the server side of a TLS handshake on the connection:
// at once on the POP3S port (RFC 8314), or after STLS.
func (ss *session) startTLS(cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("no TLS configuration")
	}
	tc := tls.Server(ss.conn, cfg)
	tc.SetDeadline(time.Now().Add(ss.s.handshakeTimeout))
	// As in readLine: Shutdown marks the server closing, then moves every
	// connection's deadline to now; checked after setting ours, one of
	// the two ends a handshake a client never makes.
	if ss.s.isClosing() {
		return errShuttingDown
	}
	if err := tc.HandshakeContext(ss.s.ctx); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && ss.s.isClosing() {
			return errShuttingDown
		}
		return fmt.Errorf("TLS handshake: %w", err)
	}
	tc.SetDeadline(time.Time{})
	ss.conn = tc
	ss.tls = true
	ss.r.Reset(tc)
	return nil
}
