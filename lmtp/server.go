package lmtp

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Options configures the LMTP server.
type Options struct {
	// Hostname is announced in the greeting and the Received header.
	Hostname string
	// MaxMessageSize is advertised as SIZE and enforced (552 5.3.4).
	MaxMessageSize int64
	// MaxRecipients per transaction (452 4.5.3 beyond it).
	MaxRecipients int
	// MaxUserConcurrency bounds concurrent deliveries to one address,
	// like Dovecot's lmtp_user_concurrency_limit (451 4.3.0 beyond it);
	// 0 is unlimited.
	MaxUserConcurrency int
	// MaxConnections bounds open connections (421 4.3.2 beyond it).
	MaxConnections int
	// MaxLineLength bounds a command or message line.
	MaxLineLength int
	// ReadTimeout and WriteTimeout are deadlines on every read and write.
	ReadTimeout, WriteTimeout time.Duration
	// DeliveredToAlways asks the Backend to give every recipient its own
	// copy with its own Delivered-To header (Envelope.DeliveredToEach).
	// Otherwise Delivered-To is added only when a transaction has one
	// recipient, so a message for many recipients is written once and
	// hard-linked (the default; Dovecot's LMTP does the same).
	DeliveredToAlways bool
	// Logger gets one line per recipient and per session problem.
	Logger *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Observer receives counts for metrics; nil discards them.
	Observer Observer
}

// Observer receives the LMTP server's measurements (the metrics package
// implements it).
type Observer interface {
	// Recipient reports one recipient's answer and, after DATA, the time
	// since DATA began (0 for answers at RCPT time).
	Recipient(code int, d time.Duration)
	// Transaction reports the recipients of one DATA.
	Transaction(recipients int)
	// Connections reports a connection opening (+1) or closing (-1).
	Connections(delta int)
}

type nopObserver struct{}

func (nopObserver) Recipient(int, time.Duration) {}
func (nopObserver) Transaction(int)              {}
func (nopObserver) Connections(int)              {}

// Server is an LMTP server over a Backend.
type Server struct {
	opts    Options
	backend Backend
	smtp    *smtp.Server
	log     *slog.Logger
	conns   atomic.Int64

	mu     sync.Mutex
	active map[string]int // deliveries in progress per address

	// draining is set by Shutdown: connections that are not inside DATA
	// are closed (nothing was acknowledged on them, so Postfix simply
	// retries), while those inside DATA finish their delivery first.
	draining  atomic.Bool
	connMu    sync.Mutex
	openConns map[*countedConn]struct{}
}

// New makes a Server.
func New(b Backend, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	s := &Server{opts: opts, backend: b, log: opts.Logger, active: make(map[string]int), openConns: make(map[*countedConn]struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.LMTP = true
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.MaxMessageSize
	srv.MaxRecipients = opts.MaxRecipients
	srv.MaxLineLength = opts.MaxLineLength
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.EnableBINARYMIME = true
	srv.ErrorLog = slogPrinter{opts.Logger}
	s.smtp = srv
	return s
}

// Serve accepts connections on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	return s.smtp.Serve(&limitListener{Listener: l, s: s})
}

// Shutdown stops accepting, closes connections that are between
// transactions or before DATA (Postfix caches idle LMTP connections, and
// nothing on them is acknowledged), lets deliveries inside DATA finish and
// answer, and waits until ctx is done; then it closes what is left (the
// client sees the connection drop and Postfix retries: nothing is
// acknowledged that is not stored).
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.connMu.Lock()
	for c := range s.openConns {
		if !c.busy.Load() {
			// Unblock a Read waiting for the next command; Read then
			// reports EOF because the server is draining.
			c.Conn.SetReadDeadline(time.Now())
		}
	}
	s.connMu.Unlock()
	err := s.smtp.Shutdown(ctx)
	if err != nil {
		// go-smtp's Close does nothing once its Shutdown has run (both
		// end by closing the same "done" channel), so the connections
		// still open are closed here: a delivery stuck on a hung filer
		// must not keep its client waiting for an answer that would come
		// after the process has stopped serving.
		s.closeOpenConns()
	}
	return err
}

// closeOpenConns closes every connection still open.
func (s *Server) closeOpenConns() {
	s.connMu.Lock()
	conns := make([]*countedConn, 0, len(s.openConns))
	for c := range s.openConns {
		conns = append(conns, c)
	}
	s.connMu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Close closes listeners and connections at once.
func (s *Server) Close() error { return s.smtp.Close() }

// Connections is the number of open connections.
func (s *Server) Connections() int64 { return s.conns.Load() }

// limitListener answers connections beyond MaxConnections with 421 and
// closes them, instead of leaving them queued in the kernel.
type limitListener struct {
	net.Listener
	s *Server
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := l.s.conns.Add(1)
		if max := l.s.opts.MaxConnections; max > 0 && n > int64(max) {
			l.s.conns.Add(-1)
			l.s.log.Warn("lmtp connection refused: too many connections", "remote", c.RemoteAddr().String(), "max", max)
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "421 4.3.2 "+l.s.opts.Hostname+" Too many connections, try again later\r\n")
			c.Close()
			continue
		}
		l.s.opts.Observer.Connections(1)
		cc := &countedConn{Conn: c, s: l.s}
		l.s.connMu.Lock()
		l.s.openConns[cc] = struct{}{}
		l.s.connMu.Unlock()
		return cc, nil
	}
}

// countedConn counts open connections and lets Shutdown drain them.
type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
	busy atomic.Bool // inside LMTPData: reading the message or storing it
}

func (c *countedConn) Read(p []byte) (int, error) {
	if c.s.draining.Load() && !c.busy.Load() {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.conns.Add(-1)
		c.s.opts.Observer.Connections(-1)
		c.s.connMu.Lock()
		delete(c.s.openConns, c)
		c.s.connMu.Unlock()
	})
	return c.Conn.Close()
}

// acquire takes a delivery slot for addr; false when the limit is reached.
func (s *Server) acquire(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.opts.MaxUserConcurrency; max > 0 && s.active[addr] >= max {
		return false
	}
	s.active[addr]++
	return true
}

func (s *Server) release(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[addr]--; s.active[addr] <= 0 {
		delete(s.active, addr)
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	var id [10]byte
	rand.Read(id[:])
	remote := ""
	if a := c.Conn().RemoteAddr(); a != nil {
		remote = a.String()
	}
	if remote == "" || remote == "@" {
		remote = "unix"
	}
	return &session{
		s:      s,
		conn:   c,
		id:     strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(id[:])),
		remote: remote,
	}, nil
}

// session is one LMTP connection. go-smtp calls it from the connection's
// goroutine, except LMTPData for BDAT, which runs in a goroutine of its
// own while the connection goes on: an RSET between chunks, a chunk over
// the size limit or the connection closing then call Reset (or Logout)
// while LMTPData still runs. So LMTPData takes the transaction over (see
// takeTransaction), and mu guards what both sides touch.
type session struct {
	s      *Server
	conn   *smtp.Conn
	id     string
	remote string

	mu       sync.Mutex
	txn      int
	from     string
	delivery Transaction // the Backend's, from MAIL until DATA or a reset
	rcpts    []rcptEntry // each holds a delivery slot (Server.acquire)
	queueID  string      // from the message's top Received header, for the log
}

type rcptEntry struct {
	addr      string // as given in RCPT TO
	canonical string // as the Backend resolved it: the unit of the slots
}

func (ss *session) txnID() string { return ss.id + "." + strconv.Itoa(ss.txn) }

func (ss *session) Reset() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.resetLocked()
}

// resetLocked ends the transaction and releases the slots of the
// recipients it still holds (not those a running LMTPData took over).
func (ss *session) resetLocked() {
	if ss.delivery != nil {
		ss.delivery.Abort()
		ss.delivery = nil
	}
	ss.releaseSlots()
	ss.from = ""
	ss.queueID = ""
}

// releaseSlots releases the delivery slots of ss.rcpts and forgets them,
// so that no slot is released twice.
func (ss *session) releaseSlots() {
	for _, e := range ss.rcpts {
		ss.s.release(e.canonical)
	}
	ss.rcpts = nil
}

// takeTransaction hands the transaction over to LMTPData: a session of
// its own with the envelope, the recipients and their slots, which only
// LMTPData's goroutine uses. The connection's session keeps no recipient,
// so a Reset while the delivery runs changes nothing the delivery reads
// and releases no slot; the delivery's release, when it has really
// ended, releases them, once.
func (ss *session) takeTransaction() (tx *session, release func()) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	tx = &session{s: ss.s, conn: ss.conn, id: ss.id, remote: ss.remote,
		txn: ss.txn, from: ss.from, delivery: ss.delivery, rcpts: ss.rcpts}
	ss.delivery, ss.rcpts = nil, nil
	return tx, tx.releaseSlots
}

func (ss *session) Logout() error {
	ss.Reset()
	return nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.resetLocked()
	ss.txn++
	ss.from = from
	ss.delivery = ss.s.backend.Begin(Envelope{
		From:            from,
		Helo:            ss.conn.Hostname(),
		Remote:          ss.remote,
		Protocol:        "LMTP",
		ID:              ss.txnID(),
		DeliveredToEach: ss.s.opts.DeliveredToAlways,
	})
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ctx, cancel := ss.context()
	defer cancel()
	ss.mu.Lock()
	delivery := ss.delivery
	ss.mu.Unlock()
	if delivery == nil {
		// go-smtp asks for MAIL first; this is only a safety net.
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	}
	var busy *smtp.SMTPError
	err := delivery.AddRecipient(ctx, to, func(canonical string) error {
		if !ss.s.acquire(canonical) {
			busy = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Too many concurrent deliveries for this user, try again later"}
			return busy
		}
		ss.mu.Lock()
		ss.rcpts = append(ss.rcpts, rcptEntry{addr: to, canonical: canonical})
		ss.mu.Unlock()
		return nil
	})
	if busy != nil {
		ss.logRcpt(to, "", busy, nil, 0, 0)
		return busy
	}
	if err != nil {
		rep := reply(to, err)
		ss.logRcpt(to, "", rep, err, 0, 0)
		return rep
	}
	return nil
}

func (ss *session) context() (context.Context, context.CancelFunc) {
	d := ss.s.opts.ReadTimeout
	if d <= 0 {
		d = 5 * time.Minute
	}
	return context.WithTimeout(context.Background(), d)
}

// Data is used only outside LMTP mode; go-smtp calls LMTPData here.
func (ss *session) Data(r io.Reader) error {
	var first error
	ss.LMTPData(r, statusFunc(func(_ string, err error) {
		if first == nil {
			first = err
		}
	}))
	return first
}

type statusFunc func(string, error)

func (f statusFunc) SetStatus(rcpt string, err error) { f(rcpt, err) }

// LMTPData hands the message to the Backend's transaction, which reads it
// once, stores it once and publishes it for each recipient; each recipient
// is answered on its own (RFC 2033 section 4.2).
func (ss *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	// From here on ss is the transaction's own session (see
	// takeTransaction), never the connection's.
	ss, release := ss.takeTransaction()
	defer release()
	if len(ss.rcpts) == 0 || ss.delivery == nil {
		// The transaction was reset before LMTPData could take it
		// (go-smtp started it for BDAT and went on): no recipient may be
		// answered 250 for a message nobody stored.
		if ss.delivery != nil {
			ss.delivery.Abort()
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Transaction aborted, try again"}
	}
	if cc, ok := ss.conn.Conn().(*countedConn); ok {
		cc.busy.Store(true)
		defer cc.busy.Store(false)
	}
	start := ss.s.opts.Now()
	ctx, cancel := ss.context()
	defer cancel()

	dr := &dataReader{r: r}
	written := ss.delivery.Deliver(ctx, dr, func(i int, st Status) {
		e := ss.rcpts[i]
		ss.mu.Lock()
		ss.queueID = st.QueueID
		ss.mu.Unlock()
		err := st.Err
		if err == nil && dr.err != nil {
			// The message was not received completely (the client went
			// away, a size limit), yet the Backend stored it: never
			// acknowledge a partial message, whatever the Backend did.
			err = dr.err
		}
		var rep *smtp.SMTPError
		if err != nil {
			rep = reply(e.addr, err)
		} else {
			rep = saved(st.Key)
		}
		ss.logRcpt(e.addr, st.Key, rep, err, st.Recipients, time.Since(start))
		status.SetStatus(e.addr, rep)
	})
	if written > 0 {
		ss.s.opts.Observer.Transaction(written)
	}
	io.Copy(io.Discard, dr)
	return nil
}

func (ss *session) logRcpt(rcpt, key string, rep *smtp.SMTPError, err error, nrcpt int, d time.Duration) {
	ss.s.opts.Observer.Recipient(rep.Code, d)
	level := slog.LevelInfo // delivered, refused
	if rep.Code >= 300 && rep.Code < 500 {
		level = slog.LevelWarn // deferred
	}
	if !ss.s.log.Enabled(context.Background(), level) {
		// Not logged at this level: build none of the line (a warn-level
		// server would make a dozen attributes per delivery for nothing).
		return
	}
	// Locked: Logout may reset the transaction from another goroutine
	// (the server closing the connection) while Rcpt logs.
	ss.mu.Lock()
	txnID, from, queueID := ss.txnID(), ss.from, ss.queueID
	ss.mu.Unlock()
	attrs := []any{
		"session", txnID, "remote", ss.remote, "from", from, "rcpt", rcpt,
	}
	if queueID != "" {
		attrs = append(attrs, "queue_id", queueID)
	}
	attrs = append(attrs, "code", rep.Code, "dsn", dsn(rep.EnhancedCode))
	if key != "" {
		attrs = append(attrs, "key", key)
	}
	if nrcpt > 0 {
		attrs = append(attrs, "recipients", nrcpt)
	}
	if d > 0 {
		attrs = append(attrs, "duration", d.Round(time.Microsecond))
	}
	switch {
	case rep.Code < 300:
		ss.s.log.Log(context.Background(), level, "delivered", attrs...)
	case rep.Code < 500:
		ss.s.log.Log(context.Background(), level, "deferred", append(attrs, "reason", rep.Message, "err", errString(err))...)
	default:
		ss.s.log.Log(context.Background(), level, "refused", append(attrs, "reason", rep.Message, "err", errString(err))...)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func dsn(c smtp.EnhancedCode) string {
	return strconv.Itoa(c[0]) + "." + strconv.Itoa(c[1]) + "." + strconv.Itoa(c[2])
}

// dataReader turns go-smtp's size-limit error into a failure the store
// passes through (so the answer is 552 5.3.4, not "try again"), and any
// other read error into a temporary failure. It remembers the first such
// error, so that LMTPData can tell whether the message arrived whole.
type dataReader struct {
	r   io.Reader
	err error
}

func (d *dataReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 552 {
			err = failure.New(failure.TooLarge, "read message", "message too big", err)
		} else {
			err = failure.Temp("read message", "message not received completely", err)
		}
		if d.err == nil {
			d.err = err
		}
	}
	return n, err
}

// slogPrinter adapts go-smtp's ErrorLog to slog.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) {
	p.l.Warn("lmtp protocol error", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (p slogPrinter) Println(v ...any) {
	p.l.Warn("lmtp protocol error", "detail", strings.TrimSpace(fmt.Sprintln(v...)))
}
