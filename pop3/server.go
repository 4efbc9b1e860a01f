package pop3

import (
	"bufio"
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// Options configures the POP3 server. Checking the values against the RFCs
// (IdleTimeout of at least 10 minutes, ...) is the configuration's job;
// this package uses what it is given and fills in zero values.
// Observer receives the POP3 server's measurements (the metrics package
// implements it).
type Observer interface {
	SessionStarted()
	// SessionEnded reports how a session ended (quit, eof, timeout,
	// error, shutdown, auth-fail, login-timeout, evicted) and what it did.
	SessionEnded(how string, retrieved, deleted int)
	// Login reports a login attempt: ok, auth_failed, in_use,
	// temp_failure, perm_failure.
	Login(result string)
}

type nopObserver struct{}

func (nopObserver) SessionStarted()               {}
func (nopObserver) SessionEnded(string, int, int) {}
func (nopObserver) Login(string)                  {}

type Options struct {
	// Hostname is announced in the greeting and the QUIT reply.
	Hostname string
	// TLSConfig returns the current TLS configuration; it is called for
	// every handshake, so a certificate reloaded on SIGHUP is used by the
	// next connection; it is called from many sessions at once. Nil means
	// no TLS: STLS is not offered and ServeTLS fails.
	TLSConfig func() *tls.Config
	// DisableSTLS withholds STLS on Serve's listeners while TLSConfig
	// still serves ServeTLS (pop3.stls = false with pop3.listen_tls).
	DisableSTLS bool
	// AllowPlaintext allows USER/PASS and AUTH PLAIN/LOGIN on connections
	// without TLS from any address.
	AllowPlaintext bool
	// TrustedNetworks are client networks from which passwords are
	// accepted without TLS.
	TrustedNetworks []netip.Prefix
	// ProxyNetworks are the load balancers whose connections must start
	// with a PROXY protocol header (v1 or v2); the client address in the
	// header is then the one that counts. Other peers are served as they
	// are, and a PROXY header from them is not believed.
	ProxyNetworks []netip.Prefix
	// IdleTimeout is the inactivity timer (RFC 1939 section 3: at least 10
	// minutes). It is the deadline of every read of a command and of every
	// write, so a client that stops reading in the middle of RETR is
	// disconnected too. Zero means 10 minutes.
	IdleTimeout time.Duration
	// LoginTimeout is how long a session may stay unauthenticated: at
	// that deadline it is closed whatever it sends, so that strangers
	// cannot hold session slots (Dovecot's login processes allow about
	// a minute too). Zero means 1 minute.
	LoginTimeout time.Duration
	// MaxSessions bounds open sessions; 0 is unlimited. When the server
	// is full, a new connection takes the slot of the oldest session
	// that has not logged in yet, which is closed; only when every
	// session is logged in is the newcomer refused.
	MaxSessions int
	// MaxPerIP bounds open sessions per client address (the real one,
	// after a PROXY header); 0 is unlimited.
	MaxPerIP int
	// AuthFailDelay is the pause before answering a failed login.
	AuthFailDelay time.Duration
	// MaxAuthFailures is the number of failed logins after which the
	// session is closed. Zero means 3.
	MaxAuthFailures int
	// MaxLineLength bounds a command line, CRLF included. Zero means 512
	// (RFC 2449 section 4 allows 255 octets for a command; the slack is
	// for long SASL responses).
	MaxLineLength int
	// Logger gets one line per session and per failed login.
	Logger *slog.Logger
	// Observer receives counts for metrics; nil discards them.
	Observer Observer
}

// ErrServerClosed is what Serve and ServeTLS return after Shutdown. It
// wraps net.ErrClosed, so a caller that treats a closed listener as a
// normal end needs nothing more.
var ErrServerClosed = fmt.Errorf("pop3: server closed: %w", net.ErrClosed)

const (
	defaultMaxLineLength   = 512
	defaultIdleTimeout     = 10 * time.Minute
	defaultLoginTimeout    = time.Minute
	defaultMaxAuthFailures = 3

	// writeBufferSize is the buffer a session borrows while it answers:
	// big enough that RETR makes few large writes, and taken from a pool
	// only while a response is being written, so that thousands of idle
	// sessions do not each hold one.
	writeBufferSize = 64 << 10
	// copyBufferSize is the buffer RETR and TOP read the message with.
	copyBufferSize = 32 << 10

	// maxProtocolErrors closes a session that keeps sending nonsense
	// (unknown commands, bad arguments), so it cannot hold a session slot
	// by talking garbage.
	maxProtocolErrors = 10

	// defaultHandshakeTimeout bounds reading the PROXY header and the TLS
	// handshake: a peer that connects and says nothing must not hold a
	// slot for the whole IdleTimeout before it is even a session.
	defaultHandshakeTimeout = 30 * time.Second
	// farewellTimeout bounds the last reply of a session that is being
	// closed (idle timeout, too many errors): it is a courtesy, and a
	// client that does not read it must not delay the end.
	farewellTimeout = 5 * time.Second
	// shutdownGrace is how long Shutdown waits, after closing the
	// remaining connections, for their sessions to release their
	// mailboxes. A mailbox left locked is broken only after the lock goes
	// stale, so it is worth waiting a little; a hung NFS server must not
	// keep the daemon from exiting.
	shutdownGrace = 5 * time.Second
)

// Server is a POP3 server over a Backend.
type Server struct {
	opts    Options
	backend Backend
	log     *slog.Logger

	// handshakeTimeout is defaultHandshakeTimeout; tests shorten it.
	handshakeTimeout time.Duration

	writers  sync.Pool // *bufio.Writer of writeBufferSize
	copyBufs sync.Pool // *[]byte of copyBufferSize

	// ctx is cancelled when Shutdown stops waiting: logins in progress
	// and failed-login pauses end at once.
	ctx    context.Context
	cancel context.CancelFunc
	forced atomic.Bool // Shutdown closed the remaining connections

	sessions atomic.Int64   // slots taken (see reserve)
	wg       sync.WaitGroup // connections being handled

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	perIP     map[netip.Addr]int
	// unauthenticated holds the slots of the sessions that have not
	// logged in, oldest first: the ones a full server drops.
	unauthenticated list.List // of *slot
}

// slot is a session's place in the server's limits.
type slot struct {
	addr netip.Addr
	conn net.Conn      // the accepted connection, closed to drop the session
	elem *list.Element // in Server.unauthenticated until login; nil after
	// evicted is set (under Server.mu) when a newcomer took the slot
	// over: the session's connection is closed, and its end no longer
	// counts against MaxSessions. Read by the session without the lock.
	evicted atomic.Bool
}

// New makes a Server.
func New(b Backend, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	if opts.MaxLineLength <= 0 {
		opts.MaxLineLength = defaultMaxLineLength
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.LoginTimeout <= 0 {
		opts.LoginTimeout = defaultLoginTimeout
	}
	if opts.MaxAuthFailures <= 0 {
		opts.MaxAuthFailures = defaultMaxAuthFailures
	}
	s := &Server{
		opts:             opts,
		backend:          b,
		log:              opts.Logger,
		handshakeTimeout: defaultHandshakeTimeout,
		listeners:        make(map[net.Listener]struct{}),
		conns:            make(map[net.Conn]struct{}),
		perIP:            make(map[netip.Addr]int),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.writers.New = func() any { return bufio.NewWriterSize(nil, writeBufferSize) }
	s.copyBufs.New = func() any { b := make([]byte, copyBufferSize); return &b }
	return s
}

// Serve accepts POP3 connections on l (port 110) until Shutdown. STLS is
// offered when Options.TLSConfig is set.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, false) }

// ServeTLS accepts POP3S connections on l (port 995, RFC 8314 implicit
// TLS) until Shutdown.
func (s *Server) ServeTLS(l net.Listener) error {
	if s.opts.TLSConfig == nil {
		return errors.New("pop3: ServeTLS needs Options.TLSConfig")
	}
	return s.serve(l, true)
}

// Sessions is the number of open sessions (not counting sessions dropped
// to make room that are still closing).
func (s *Server) Sessions() int64 { return s.sessions.Load() }

// Shutdown stops accepting, ends the sessions waiting for a command, and
// waits for the others to finish the command in progress, until ctx is
// done; then it closes their connections. A session closed that
// way did not see QUIT, so it deletes nothing (RFC 1939 section 6): its
// mailbox is closed, not committed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	// Wake the sessions waiting for a command: they end at once with
	// replyShuttingDown (readLine). A session in the middle of a command
	// (a RETR, a QUIT's deletions) is waited for until ctx is done.
	now := time.Now()
	for c := range s.conns {
		c.SetReadDeadline(now)
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}

	s.forced.Store(true)
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	t := time.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("pop3 sessions still ending after shutdown", "sessions", s.Sessions())
	}
	return ctx.Err()
}

func (s *Server) serve(l net.Listener, implicitTLS bool) error {
	if len(s.opts.ProxyNetworks) > 0 {
		l = &proxyproto.Listener{
			Listener:          l,
			ConnPolicy:        s.proxyPolicy,
			ValidateHeader:    validateProxyHeader,
			ReadHeaderTimeout: s.handshakeTimeout,
		}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if !temporaryAcceptError(err) {
				return err
			}
			// Out of file descriptors or memory: wait for sessions to
			// end instead of spinning or giving up on the listener.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("pop3 accept failed; retrying", "err", err, "delay", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go s.handle(c, implicitTLS)
	}
}

func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// track registers an accepted connection so that Shutdown can wait for it
// and close it. The WaitGroup is added to under the same lock that
// Shutdown sets closing under, so no Add can race with its Wait.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// proxyPolicy makes the PROXY header mandatory for the load balancers in
// ProxyNetworks (the spec says a receiver must not guess whether a header
// is present) and leaves every other connection untouched (SKIP). SKIP,
// not REJECT or IGNORE: those make the library wait for the client's first
// bytes to look for a header, and in POP3 the server speaks first, so a
// direct client would sit through the header timeout before its greeting.
// A header sent by such a peer then arrives as a command and is refused
// (see the PROXY case in session.dispatch); it is never believed.
func (s *Server) proxyPolicy(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
	if ap, ok := addrPortOf(o.Upstream); ok && inNetworks(ap.Addr(), s.opts.ProxyNetworks) {
		return proxyproto.REQUIRE, nil
	}
	return proxyproto.SKIP, nil
}

// validateProxyHeader accepts TCP client addresses, and LOCAL or UNKNOWN
// headers (a load balancer's health check, where the connection's own
// address stands); a UDP or Unix socket source is not a POP3 client.
func validateProxyHeader(h *proxyproto.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	switch h.TransportProtocol {
	case proxyproto.TCPv4, proxyproto.TCPv6, proxyproto.UNSPEC:
		return nil
	}
	return fmt.Errorf("pop3: PROXY header with transport %v", h.TransportProtocol)
}

// handle runs one connection: PROXY header, limits, then the session.
func (s *Server) handle(c net.Conn, implicitTLS bool) {
	defer s.untrack(c)
	defer c.Close()

	via := ""
	if pc, ok := c.(*proxyproto.Conn); ok {
		// A zero-length read makes the library read and check the header
		// now (under its ReadHeaderTimeout), before the address is used
		// for limits and before we write the greeting.
		if _, err := pc.Read(nil); err != nil {
			s.log.Warn("pop3 connection dropped: bad PROXY header", "peer", pc.Raw().RemoteAddr().String(), "err", err)
			return
		}
		via = pc.Raw().RemoteAddr().String()
		if via == c.RemoteAddr().String() {
			via = "" // LOCAL header: the balancer's own health check
		}
	}
	remote, _ := addrPortOf(c.RemoteAddr())
	remoteStr := c.RemoteAddr().String()
	if remote.IsValid() {
		remoteStr = remote.String()
	}

	sl, msg := s.reserve(remote.Addr(), c)
	if msg != "" {
		s.log.Warn("pop3 session refused", "remote", remoteStr, "reason", msg,
			"max_sessions", s.opts.MaxSessions, "max_per_ip", s.opts.MaxPerIP)
		s.refuse(c, implicitTLS, "-ERR [SYS/TEMP] "+msg+", try again later\r\n")
		return
	}
	defer s.release(sl)

	ss := newSession(s, c, sl, remote, remoteStr, via)
	s.opts.Observer.SessionStarted()
	ss.serve(implicitTLS)
}

// reserve takes a session slot for a connection from addr, or says why
// there is none. A full server drops its oldest unauthenticated session
// to make room, as Dovecot's login processes do: strangers that connect
// and never log in would otherwise keep every real user out. Only when
// every session is logged in is the newcomer refused.
func (s *Server) reserve(addr netip.Addr, c net.Conn) (*slot, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.opts.MaxPerIP; max > 0 && addr.IsValid() && s.perIP[addr] >= max {
		return nil, "too many sessions from your address"
	}
	if max := s.opts.MaxSessions; max > 0 && s.sessions.Load() >= int64(max) {
		if !s.evictOldestUnauthenticated() {
			return nil, "too many sessions"
		}
	} else {
		s.sessions.Add(1)
	}
	if addr.IsValid() {
		s.perIP[addr]++
	}
	sl := &slot{addr: addr, conn: c}
	sl.elem = s.unauthenticated.PushBack(sl)
	return sl, ""
}

// evictOldestUnauthenticated closes the oldest session that has not
// logged in and hands its slot (its count in sessions) to the caller.
// Called with s.mu held.
func (s *Server) evictOldestUnauthenticated() bool {
	front := s.unauthenticated.Front()
	if front == nil {
		return false
	}
	victim := s.unauthenticated.Remove(front).(*slot)
	victim.elem = nil
	victim.evicted.Store(true)
	// Closing the connection (not the session's TLS layer, which could
	// block writing an alert) ends whatever the session is waiting for.
	victim.conn.Close()
	return true
}

// loggedIn takes a session's slot off the list of unauthenticated ones: a
// logged-in session is never dropped to make room.
func (s *Server) loggedIn(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unlistUnauthenticated(sl)
}

// unlistUnauthenticated takes sl off the list of unauthenticated sessions
// if it is there; s.mu is held.
func (s *Server) unlistUnauthenticated(sl *slot) {
	if sl.elem != nil {
		s.unauthenticated.Remove(sl.elem)
		sl.elem = nil
	}
}

func (s *Server) release(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unlistUnauthenticated(sl)
	if !sl.evicted.Load() {
		s.sessions.Add(-1) // an evicted session's count went to the newcomer
	}
	if sl.addr.IsValid() {
		if s.perIP[sl.addr]--; s.perIP[sl.addr] <= 0 {
			delete(s.perIP, sl.addr)
		}
	}
}

// refuse tells a client beyond the limits why it is turned away, instead
// of closing silently (which clients report as a network error). On the
// implicit-TLS port the reply must be inside TLS to be readable at all.
func (s *Server) refuse(c net.Conn, implicitTLS bool, line string) {
	c.SetDeadline(time.Now().Add(min(s.handshakeTimeout, farewellTimeout)))
	var w io.Writer = c
	if implicitTLS {
		cfg := s.opts.TLSConfig()
		if cfg == nil {
			return
		}
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		w = tc
	}
	io.WriteString(w, line)
}

// addrPortOf returns a connection address as an AddrPort with IPv4-mapped
// IPv6 addresses unmapped, so that 127.0.0.0/8 matches a dual-stack
// socket's ::ffff:127.0.0.1 and limits count one client once.
func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
		return netip.AddrPort{}, false
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.AddrPort{}, false
		}
	}
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

func inNetworks(a netip.Addr, nets []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range nets {
		if p.Contains(a) || (a.Is4() && p.Contains(netip.AddrFrom16(a.As16()))) {
			return true
		}
	}
	return false
}
