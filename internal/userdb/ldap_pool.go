package userdb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// ldapError is a failed exchange with the directory, classified.
type ldapError struct {
	op  string // "connect", "search", "user bind"
	uri string // "" when no server was tried
	err error
	// outage: the directory could not answer (network trouble, timeout,
	// busy, unavailable, unwilling): Lookup may fall back to a stale
	// cached entry. Otherwise the directory answered something unusable.
	outage bool
}

func (e *ldapError) Error() string {
	if e.uri == "" {
		return "ldap " + e.op + ": " + e.err.Error()
	}
	return "ldap " + e.op + " on " + e.uri + ": " + e.err.Error()
}

func (e *ldapError) Unwrap() error { return e.err }

func (e *ldapError) reason() string {
	if e.outage {
		return reasonLDAPDown
	}
	return "user directory error"
}

// errClass says what a failed operation means for the connection and the
// server.
type errClass int

const (
	// classBroken: the connection is unusable (network error, timeout,
	// unparsable answer).
	classBroken errClass = iota
	// classServer: the server refuses work for now (busy, unavailable):
	// another server may do it.
	classServer
	// classAnswer: a definite answer (wrong password, no such base,
	// size limit, unwilling): retrying elsewhere will not change it.
	classAnswer
)

// classify sorts an error from go-ldap. Result codes not listed are
// answers that are no outage; anything that is not an *ldap.Error (the
// reader's network errors, deadline errors) broke the connection.
func classify(err error) (class errClass, outage bool) {
	var le *ldap.Error
	if !errors.As(err, &le) {
		return classBroken, true
	}
	switch le.ResultCode {
	case ldap.ErrorNetwork, ldap.ErrorUnexpectedMessage, ldap.ErrorUnexpectedResponse, ldap.ErrorMalformedPacket:
		return classBroken, true
	case ldap.LDAPResultBusy, ldap.LDAPResultUnavailable:
		return classServer, true
	case ldap.LDAPResultUnwillingToPerform, ldap.LDAPResultTimeLimitExceeded, ldap.LDAPResultAdminLimitExceeded:
		return classAnswer, true
	}
	return classAnswer, false
}

// ldapConn is one connection of a pool.
type ldapConn struct {
	l      *ldap.Conn
	raw    net.Conn // under TLS, if any: deadlines are set here
	srv    *ldapServer
	born   time.Time
	reused bool // taken from the idle list rather than dialled for this use
	broken bool // a cancelled context poisoned its deadline
}

// aLongTimeAgo is a deadline that has passed: setting it aborts a blocked
// read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// do runs fn with the connection's deadline set to dl. The deadline is set
// on the socket itself, so it also bounds a server that accepted the
// connection and then stopped answering; when it fires, go-ldap's reader
// fails and the connection closes. Cancelling ctx fires it at once.
func (c *ldapConn) do(ctx context.Context, dl time.Time, fn func(*ldap.Conn) error) error {
	left := time.Until(dl)
	if left <= 0 {
		c.broken = true
		return os.ErrDeadlineExceeded
	}
	c.raw.SetDeadline(dl)
	c.l.SetTimeout(left)
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(aLongTimeAgo) })
	err := fn(c.l)
	if stop() {
		c.raw.SetDeadline(time.Time{})
	} else {
		c.broken = true
	}
	return err
}

func (c *ldapConn) close() { c.l.Close() }

// ldapPool is a bounded set of connections.
type ldapPool struct {
	d     *LDAP
	bind  bool          // bind as the service account after connecting
	slots chan struct{} // one token per connection in use

	mu     sync.Mutex
	idle   []*ldapConn
	closed bool
}

// get returns a connection for exclusive use: an idle one that is still
// open, recent and on a server not in back-off, or a new one.
func (p *ldapPool) get(ctx context.Context, dl time.Time) (*ldapConn, error) {
	t := time.NewTimer(time.Until(dl))
	defer t.Stop()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, &ldapError{op: "connect", err: ctx.Err(), outage: true}
	case <-t.C:
		return nil, &ldapError{op: "connect", err: errors.New("every connection of the pool stayed busy"), outage: true}
	}
	now := time.Now()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, &ldapError{op: "connect", err: errors.New("closed"), outage: true}
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if c.l.IsClosing() || now.Sub(c.born) > ldapMaxConnAge || p.d.isDown(c.srv, now) {
			c.close()
			continue
		}
		c.reused = true
		return c, nil
	}
	c, err := p.d.connect(ctx, p.bind)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// put gives a connection back: kept if ok, closed otherwise.
func (p *ldapPool) put(c *ldapConn, ok bool) {
	if ok && !c.broken && !c.l.IsClosing() {
		p.mu.Lock()
		if !p.closed {
			p.idle = append(p.idle, c)
			c = nil
		}
		p.mu.Unlock()
	}
	if c != nil {
		c.close()
	}
	<-p.slots
}

func (p *ldapPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// deadline is now plus the timeout, or ctx's deadline if sooner.
func (d *LDAP) deadline(ctx context.Context) time.Time {
	dl := time.Now().Add(d.timeout)
	if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
		return cdl
	}
	return dl
}

// withConn runs fn on a connection of p, failing over: when the connection
// breaks or the server is busy, the server is put in back-off (unless a
// connection that sat idle merely turned out to be closed) and fn runs
// again on a connection to the next server. Every server is tried at most
// once more than there are URIs; a server in back-off is not tried.
func (d *LDAP) withConn(ctx context.Context, p *ldapPool, what string, fn func(*ldap.Conn) error) error {
	var last *ldapError
	for range len(d.servers) + 1 {
		c, err := p.get(ctx, d.deadline(ctx))
		if err != nil {
			le, ok := errors.AsType[*ldapError](err)
			if !ok {
				le = &ldapError{op: "connect", err: err, outage: true}
			}
			if last != nil {
				le.err = fmt.Errorf("%w (before: %v)", le.err, last)
			}
			return le
		}
		dl := d.deadline(ctx)
		err = c.do(ctx, dl, fn)
		if err == nil {
			p.put(c, true)
			return nil
		}
		class, outage := classify(err)
		le := &ldapError{op: what, uri: c.srv.uri, err: err, outage: outage}
		if ctx.Err() != nil {
			p.put(c, false)
			le.err, le.outage = fmt.Errorf("%w (%v)", ctx.Err(), err), true
			return le
		}
		timedOut := class == classBroken && !time.Now().Before(dl)
		if timedOut {
			le.err = fmt.Errorf("no answer within %v: %w", d.timeout, err)
		}
		switch class {
		case classAnswer:
			p.put(c, true)
			return le
		case classServer:
			p.put(c, false)
			d.markDown(c.srv, le)
		case classBroken:
			p.put(c, false)
			if timedOut || !c.reused {
				d.markDown(c.srv, le)
			}
		}
		last = le
	}
	return last
}

// connect dials the servers in order, skipping those in back-off, and
// returns the first connection that is set up (TLS, service bind). Each
// server gets its own deadline.
func (d *LDAP) connect(ctx context.Context, bind bool) (*ldapConn, error) {
	var errs []error
	for _, s := range d.servers {
		if d.isDown(s, time.Now()) {
			continue
		}
		dl := d.deadline(ctx)
		c, err := d.dial(ctx, s, dl, bind)
		if err == nil {
			d.markUp(s)
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, &ldapError{op: "connect", uri: s.uri, err: fmt.Errorf("%w (%v)", ctx.Err(), err), outage: true}
		}
		if !time.Now().Before(dl) {
			err = fmt.Errorf("no answer within %v: %w", d.timeout, err)
		}
		le := &ldapError{op: "connect", uri: s.uri, err: err, outage: true}
		d.markDown(s, le)
		errs = append(errs, le)
	}
	if len(errs) == 0 {
		return nil, &ldapError{op: "connect", err: errors.New("every server failed recently and is in back-off"), outage: true}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return nil, &ldapError{op: "connect", err: errors.New(strings.Join(msgs, "; ")), outage: true}
}

// dial connects to s: TCP, TLS for ldaps://, StartTLS if configured, and
// the service bind if bind is set, all before dl.
func (d *LDAP) dial(ctx context.Context, s *ldapServer, dl time.Time, bind bool) (*ldapConn, error) {
	dctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, "tcp", s.addr)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(aLongTimeAgo) })
	defer stop()
	nc := raw
	if s.ldaps {
		tc := tls.Client(raw, d.tlsConfig(s.host))
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		nc = tc
	}
	l := ldap.NewConn(nc, s.ldaps)
	l.Start()
	l.SetTimeout(time.Until(dl))
	fail := func(err error) (*ldapConn, error) {
		l.Close()
		return nil, err
	}
	if d.startTLS && !s.ldaps {
		if err := l.StartTLS(d.tlsConfig(s.host)); err != nil {
			return fail(fmt.Errorf("StartTLS: %w", err))
		}
	}
	if bind && d.bindDN != "" {
		pw, err := d.bindPassword()
		if err != nil {
			return fail(fmt.Errorf("bind password file: %w", err))
		}
		if err := l.Bind(d.bindDN, pw); err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				d.log.Error("ldap: the service account's bind was refused: check ldap.bind_dn and ldap.bind_password_file",
					"uri", s.uri, "bind_dn", d.bindDN)
			}
			return fail(fmt.Errorf("service bind as %s: %w", d.bindDN, err))
		}
	}
	if !stop() || time.Now().After(dl) {
		return fail(fmt.Errorf("connecting: %w", os.ErrDeadlineExceeded))
	}
	raw.SetDeadline(time.Time{})
	return &ldapConn{l: l, raw: raw, srv: s, born: time.Now()}, nil
}

func (d *LDAP) isDown(s *ldapServer, now time.Time) bool {
	d.srvMu.Lock()
	defer d.srvMu.Unlock()
	return now.Before(s.until)
}

// markDown puts s in back-off: one second (at most RetryBackoff) after the
// first failure, doubling with each failure in a row up to RetryBackoff.
func (d *LDAP) markDown(s *ldapServer, err error) {
	d.srvMu.Lock()
	s.failed++
	wait := min(ldapBackoffStart, d.backoffMax)
	for i := 1; i < s.failed && wait < d.backoffMax; i++ {
		wait *= 2
	}
	wait = min(wait, d.backoffMax)
	s.until = time.Now().Add(wait)
	failed := s.failed
	d.srvMu.Unlock()
	if le, ok := err.(*ldapError); ok {
		err = le.err // the URI is logged on its own
	}
	d.log.Warn("ldap: server failed, skipping it for a while", "uri", s.uri, "failures", failed, "retry_in", wait, "error", err)
}

func (d *LDAP) markUp(s *ldapServer) {
	d.srvMu.Lock()
	failed := s.failed
	s.failed, s.until = 0, time.Time{}
	d.srvMu.Unlock()
	if failed > 0 {
		d.log.Info("ldap: server answers again", "uri", s.uri, "after_failures", failed)
	}
}
