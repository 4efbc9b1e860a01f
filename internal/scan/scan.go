// Package scan is nfsdrop's virus scanner client: it streams messages to
// ClamAV's clamd with the INSTREAM command and returns the verdict.
//
// A message is never held in memory: it goes to clamd in chunks of
// Options.ChunkSize as it is read, either by Scan (which reads the message
// itself) or by Tee (which scans a message while the caller reads it, so
// that a delivery can write its tmp/ file and scan it in one pass, and
// decide before it publishes anything).
//
// clamd's failures are *failure.Error values of kind Temporary ("virus
// scanner unavailable"), so that Postfix keeps the message and retries (an
// error from reading the message is returned as it is); errors.Is
// tells the causes apart: ErrUnavailable (clamd could not be reached, timed
// out or answered ERROR: what [scan] fail_open is about) and ErrTooLarge
// (the message is larger than clamd's StreamMaxLength and OnTooLarge is
// "tempfail"). A virus is not an error of Scan: it is a Result with a
// Signature, and Result.Err turns it into a failure.Virus for a caller
// that rejects infected mail.
//
// The protocol (clamd(8)): "zINSTREAM\x00", then chunks of a 4-byte
// big-endian length followed by that many bytes, then a zero length. clamd
// answers "stream: OK\x00", "stream: NAME FOUND\x00", or a line ending in
// "ERROR" ("INSTREAM size limit exceeded. ERROR\x00" when the stream is
// longer than its StreamMaxLength, after which it closes the connection).
package scan

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/envelope"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Defaults for the zero values of Options.
const (
	DefaultTimeout   = 30 * time.Second
	DefaultChunkSize = 64 << 10
	// MaxChunkSize bounds Options.ChunkSize (and so the memory per scan).
	MaxChunkSize = 16 << 20
)

// OnTooLarge values.
const (
	// TooLargeTempfail fails a message longer than clamd accepts with a
	// Temporary error wrapping ErrTooLarge.
	TooLargeTempfail = "tempfail"
	// TooLargeSkip returns Result{Skipped: true}: the caller stores the
	// message unscanned (and should tag it so).
	TooLargeSkip = "skip"
)

// Outcomes passed to Options.Observe and logged as "result".
const (
	OutcomeClean       = "clean"       // clamd answered OK
	OutcomeFound       = "found"       // clamd found a signature
	OutcomeSkipped     = "skipped"     // too large, OnTooLarge "skip": not scanned
	OutcomeTooLarge    = "too_large"   // too large, OnTooLarge "tempfail"
	OutcomeUnavailable = "unavailable" // no clamd reachable, timeout, ERROR reply, protocol error
	OutcomeAborted     = "aborted"     // the message could not be read (the reader's error)
)

// Protocol strings.
const (
	cmdInstream = "zINSTREAM\x00"
	cmdPing     = "zPING\x00"
	op          = "clamd scan"
	reason      = "virus scanner unavailable"
	// maxReply bounds a reply from clamd (a signature name is short).
	maxReply = 4096
	// maxDialTimeout bounds the time spent connecting to one address, so
	// that an unreachable first address leaves time for the next.
	maxDialTimeout = 5 * time.Second
	// downFor is how long an address that failed to connect is tried only
	// after the others.
	downFor = 10 * time.Second
)

var (
	// ErrUnavailable is in the chain of the error of a scan that failed
	// because of clamd: no address could be connected to, the deadline
	// passed, clamd answered ERROR or something unexpected, or closed the
	// connection. It is what [scan] fail_open lets through.
	ErrUnavailable = errors.New("clamd unavailable")
	// ErrTooLarge is in the chain of the error of a scan that failed
	// because the message is longer than clamd's StreamMaxLength, with
	// OnTooLarge "tempfail".
	ErrTooLarge = errors.New("message larger than clamd's StreamMaxLength")
	// errAborted ends the background scan of Tee when the verdict is asked
	// for before the reader reached EOF.
	errAborted = errors.New("message not read to the end before the scan verdict was asked for")
)

// Options configures a Scanner.
type Options struct {
	// Addresses of clamd: "unix:/run/clamav/clamd.ctl" or
	// "tcp:127.0.0.1:3310" ("host:port" alone means tcp). Each scan tries
	// them in turn until one accepts the connection; an address that
	// failed to connect in the last few seconds is tried after the others.
	// At least one is required.
	Addresses []string
	// Timeout bounds a whole scan, from connecting to the verdict
	// (default DefaultTimeout). With Tee, where the pace is the caller's,
	// it bounds connecting, each write to clamd and the wait for the
	// verdict after EOF instead, so that a slow reader is not mistaken for
	// a hung clamd.
	// A context deadline that comes sooner wins.
	Timeout time.Duration
	// ChunkSize is the INSTREAM chunk size and the memory a scan holds
	// (default DefaultChunkSize, at most MaxChunkSize).
	ChunkSize int
	// StreamMaxLength is clamd's StreamMaxLength (clamd.conf), or 0 when
	// unknown. When known, a longer message is recognised by this side
	// after StreamMaxLength bytes, without sending the rest; when unknown,
	// clamd's "INSTREAM size limit exceeded" reply says so.
	StreamMaxLength int64
	// OnTooLarge is what a message longer than clamd's StreamMaxLength
	// gets: TooLargeTempfail (default) or TooLargeSkip.
	OnTooLarge string
	// Logger gets one line per scan: debug for clean, info for found,
	// warn for skipped and failed scans. Default: no logging.
	Logger *slog.Logger
	// Observe, when not nil, is called once per scan with one of the
	// Outcome constants and the scan's duration (for metrics).
	Observe func(result string, d time.Duration)
}

// Result is the verdict on one message.
type Result struct {
	// Clean: clamd found nothing.
	Clean bool
	// Signature is the name of what clamd found ("Win.Test.EICAR_HDB-1");
	// "" unless infected.
	Signature string
	// Skipped: the message is longer than clamd's StreamMaxLength and
	// OnTooLarge is "skip"; it was not (completely) scanned.
	Skipped bool
	// Server is the address, as in Options.Addresses, of the clamd that
	// gave the verdict.
	Server string
}

// Infected reports whether clamd found a signature.
func (r Result) Infected() bool { return r.Signature != "" }

// Err returns a failure.Virus error carrying the signature as Detail when
// the message is infected, and nil otherwise (clean or skipped).
func (r Result) Err() error {
	if !r.Infected() {
		return nil
	}
	return &failure.Error{Kind: failure.Virus, Op: op, Reason: "virus found", Detail: r.Signature}
}

// StatusHeader returns the header line, with its CRLF, that records the
// outcome of a scan in a stored message (for [scan] action "tag",
// on_too_large "skip" and fail_open; Staged.Deliver's prefix can carry it,
// since the verdict comes after the message is written):
//
//	X-Virus-Status: Clean
//	X-Virus-Status: Infected (SIGNATURE)
//	X-Virus-Status: Unscanned (too large)
//	X-Virus-Status: Unscanned (scanner unavailable)
//
// the last when err is not nil.
func StatusHeader(res Result, err error) string {
	v := "Clean"
	switch {
	case err != nil:
		v = "Unscanned (scanner unavailable)"
	case res.Infected():
		v = "Infected (" + envelope.Sanitize(res.Signature) + ")"
	case res.Skipped:
		v = "Unscanned (too large)"
	}
	return StatusHeaderName + ": " + v + "\r\n"
}

// StatusHeaderName is the name of the header StatusHeader makes. A
// delivery that adds it should first make sure that the message does not
// already carry one from outside, or ignore such a header when reading it.
const StatusHeaderName = "X-Virus-Status"

// Scanner talks to clamd. It is safe for concurrent use: every scan has a
// connection of its own.
type Scanner struct {
	addrs   []*address
	timeout time.Duration
	chunk   int
	max     int64
	skip    bool
	log     *slog.Logger
	observe func(string, time.Duration)
	bufs    sync.Pool
	dialer  net.Dialer
}

type address struct {
	name          string // as configured
	network, addr string
	downUntil     atomic.Int64 // unix nanoseconds; 0 when not known down
}

// New checks o and returns a Scanner. It does not connect: see Ping.
func New(o Options) (*Scanner, error) {
	if len(o.Addresses) == 0 {
		return nil, errors.New("scan: no clamd address")
	}
	s := &Scanner{
		timeout: o.Timeout,
		chunk:   o.ChunkSize,
		max:     o.StreamMaxLength,
		log:     o.Logger,
		observe: o.Observe,
	}
	seen := make(map[string]bool)
	for _, a := range o.Addresses {
		network, addr, err := ParseAddress(a)
		if err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		if seen[network+" "+addr] {
			return nil, fmt.Errorf("scan: clamd address %q is listed twice", a)
		}
		seen[network+" "+addr] = true
		s.addrs = append(s.addrs, &address{name: a, network: network, addr: addr})
	}
	switch {
	case s.timeout < 0:
		return nil, fmt.Errorf("scan: negative timeout %v", o.Timeout)
	case s.timeout == 0:
		s.timeout = DefaultTimeout
	}
	switch {
	case s.chunk < 0 || s.chunk > MaxChunkSize:
		return nil, fmt.Errorf("scan: chunk size %d is not between 1 and %d", o.ChunkSize, MaxChunkSize)
	case s.chunk == 0:
		s.chunk = DefaultChunkSize
	}
	if s.max < 0 {
		return nil, fmt.Errorf("scan: negative StreamMaxLength %d", o.StreamMaxLength)
	}
	switch o.OnTooLarge {
	case "", TooLargeTempfail:
	case TooLargeSkip:
		s.skip = true
	default:
		return nil, fmt.Errorf("scan: OnTooLarge must be %q or %q, got %q", TooLargeTempfail, TooLargeSkip, o.OnTooLarge)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.bufs.New = func() any { b := make([]byte, len(cmdInstream)+4+s.chunk+4); return &b }
	return s, nil
}

// ParseAddress splits a clamd address ("unix:/path", "tcp:host:port" or
// "host:port") into the network and address arguments of net.Dial. The
// socket path must be absolute, the host and the numeric port present.
func ParseAddress(s string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return "", "", fmt.Errorf("clamd address %q: the socket path must be absolute", s)
		}
		return "unix", path, nil
	}
	hostport := strings.TrimPrefix(s, "tcp:")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return "", "", fmt.Errorf("clamd address %q is not \"unix:/path\" or \"tcp:host:port\"", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("clamd address %q: the port must be a number from 1 to 65535", s)
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

// Scan streams r to clamd as it is read, ChunkSize bytes at a time, and
// returns the verdict. It stops reading r as soon as the verdict is known
// before the end (a message longer than StreamMaxLength, a failed scan):
// r is not drained. An error from r is returned as it is; clamd's failures
// are Temporary *failure.Error values (see the package documentation).
func (s *Scanner) Scan(ctx context.Context, r io.Reader) (Result, error) {
	return s.scan(ctx, r, false)
}

// Tee returns a reader that passes r through unchanged while a background
// goroutine streams the same bytes to clamd, and a function that returns
// the verdict once the reader has returned io.EOF. The caller must call
// the function in every case, as it releases the connection (later calls
// return the same): called before EOF, or after the reader returned
// another error, it abandons the scan and returns an error. Call it from
// the goroutine that reads, or after the reading is over.
//
// Reading is paced by clamd (at most one chunk is in flight), but never
// stopped by it: when the scan ends early (too large, clamd failed), the
// reader goes on passing r through, and the verdict says what happened.
// A hung clamd delays the reader by about Timeout, once.
func (s *Scanner) Tee(ctx context.Context, r io.Reader) (io.Reader, func() (Result, error)) {
	pr, pw := io.Pipe()
	t := &teeReader{r: r, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		t.res, t.err = s.scan(ctx, pr, true)
		// Unblock a Write in progress and make later ones fail fast:
		// the reader keeps passing r through.
		pr.CloseWithError(errScanOver)
	}()
	var once sync.Once
	wait := func() (Result, error) {
		once.Do(func() {
			if !t.eof {
				pw.CloseWithError(errAborted)
			}
			<-t.done
		})
		return t.res, t.err
	}
	return t, wait
}

var errScanOver = errors.New("scan over")

type teeReader struct {
	r    io.Reader
	pw   *io.PipeWriter
	eof  bool
	done chan struct{}
	res  Result
	err  error
	dead bool // the scan is over; stop feeding it
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 && !t.dead {
		if _, werr := t.pw.Write(p[:n]); werr != nil {
			t.dead = true
		}
	}
	switch {
	case err == io.EOF:
		t.eof = true
		t.pw.Close()
	case err != nil:
		t.pw.CloseWithError(err)
	}
	return n, err
}

// Ping connects to the first clamd address that answers and checks that it
// replies PONG to PING. It fails with a Temporary error wrapping
// ErrUnavailable.
func (s *Scanner) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, a, err := s.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, cmdPing); err != nil {
		return unavailable(a, "ping", err)
	}
	rep, err := readReply(conn)
	if err != nil {
		return unavailable(a, "ping", err)
	}
	if rep != "PONG" {
		return unavailable(a, "ping", fmt.Errorf("unexpected reply %q", rep))
	}
	return nil
}

// unavailable builds the error of a scan that failed because of clamd.
func unavailable(a *address, what string, cause error) error {
	name := ""
	if a != nil {
		name = " " + a.name
	}
	return &failure.Error{Kind: failure.Temporary, Op: op, Reason: reason,
		Err: fmt.Errorf("%w: %s%s: %w", ErrUnavailable, what, name, cause)}
}

// dial connects to the first address that accepts, trying those not known
// to be down first.
func (s *Scanner) dial(ctx context.Context) (net.Conn, *address, error) {
	now := time.Now().UnixNano()
	order := make([]*address, 0, len(s.addrs))
	var down []*address
	for _, a := range s.addrs {
		if a.downUntil.Load() > now {
			down = append(down, a)
		} else {
			order = append(order, a)
		}
	}
	order = append(order, down...)
	var errs []error
	for _, a := range order {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		dctx, cancel := context.WithTimeout(ctx, maxDialTimeout)
		conn, err := s.dialer.DialContext(dctx, a.network, a.addr)
		cancel()
		if err == nil {
			a.downUntil.Store(0)
			return conn, a, nil
		}
		a.downUntil.Store(time.Now().Add(downFor).UnixNano())
		errs = append(errs, err)
		if a != order[len(order)-1] {
			s.log.LogAttrs(ctx, slog.LevelWarn, "clamd unreachable, trying the next address",
				slog.String("server", a.name), slog.String("err", err.Error()))
		}
	}
	return nil, nil, &failure.Error{Kind: failure.Temporary, Op: op, Reason: reason,
		Err: fmt.Errorf("%w: connect: %w", ErrUnavailable, errors.Join(errs...))}
}

// scan runs one INSTREAM exchange. tee selects Tee's deadlines (per write,
// and for the reply after EOF) over Scan's (one for the whole exchange).
func (s *Scanner) scan(ctx context.Context, r io.Reader, tee bool) (res Result, err error) {
	start := time.Now()
	x := &exchange{s: s, tee: tee, outcome: OutcomeUnavailable}
	defer func() {
		s.report(ctx, x.outcome, res, err, x.sent, time.Since(start))
	}()
	if !tee {
		x.whole = start.Add(s.timeout)
		if dl, ok := ctx.Deadline(); !ok || x.whole.Before(dl) {
			var c context.CancelFunc
			ctx, c = context.WithDeadline(ctx, x.whole)
			defer c()
		}
	}
	x.ctx = ctx
	conn, a, err := s.dialForScan(ctx, tee)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	x.conn, x.a = conn, a
	x.res.Server = a.name
	// A cancelled context unblocks every read and write at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	x.readReplyConcurrently()
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	return x.stream(r, *bp)
}

// dialForScan connects for a scan. With Tee the connection is made at
// once, before the caller's first chunk: it is bounded like a write.
func (s *Scanner) dialForScan(ctx context.Context, tee bool) (net.Conn, *address, error) {
	if tee {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, s.timeout)
		defer c()
	}
	return s.dial(ctx)
}

// exchange is the state of one INSTREAM exchange, from the connection to
// the verdict.
type exchange struct {
	s    *Scanner
	ctx  context.Context
	conn net.Conn
	a    *address
	tee  bool
	// whole is Scan's deadline for everything (zero with Tee).
	whole time.Time
	// replies receives clamd's one reply, read concurrently.
	replies chan reply
	res     Result
	outcome string // for report
	sent    int64  // bytes of the message sent
}

// deadline is the deadline of the next write or read.
func (x *exchange) deadline() time.Time {
	if !x.tee {
		return x.whole
	}
	return time.Now().Add(x.s.timeout)
}

// readReplyConcurrently starts reading the reply. clamd may answer before
// the end of the stream (size limit exceeded, then it closes the
// connection): the reply is read concurrently, so that it is not lost when
// a write then fails.
func (x *exchange) readReplyConcurrently() {
	x.replies = make(chan reply, 1)
	go func() {
		rep, err := readReply(x.conn)
		x.replies <- reply{rep, err}
	}()
}

// early returns the reply if clamd has already answered.
func (x *exchange) early() (reply, bool) {
	select {
	case rp := <-x.replies:
		return rp, true
	default:
		return reply{}, false
	}
}

// afterWriteError waits for what clamd said before it stopped reading.
func (x *exchange) afterWriteError(werr error) (Result, error) {
	if x.ctx.Err() == nil {
		dl := time.Now().Add(time.Second)
		if d := x.deadline(); d.Before(dl) {
			dl = d
		}
		x.conn.SetReadDeadline(dl)
	}
	rp := <-x.replies
	if rp.err == nil {
		return x.s.verdict(x.a, rp.text, &x.res, &x.outcome)
	}
	if x.ctx.Err() != nil {
		werr = fmt.Errorf("%w (%w)", werr, context.Cause(x.ctx))
	}
	return x.res, unavailable(x.a, "send", werr)
}

// stream sends r in chunks and returns the verdict.
//
// buf is the command, a chunk's length, the chunk and room for the
// terminating zero length: the command goes out with the first chunk
// and the terminator with the last, in as few writes as possible
// (which matters for small messages). With Tee the command goes out at
// once, so that clamd does not wait for it while the caller's first
// chunk comes in.
func (x *exchange) stream(r io.Reader, buf []byte) (Result, error) {
	s, conn := x.s, x.conn
	const hdr = len(cmdInstream)
	copy(buf, cmdInstream)
	body := buf[hdr+4 : hdr+4+s.chunk]
	from := 0 // where the next write starts: 0 while the command is unsent

	conn.SetWriteDeadline(x.deadline())
	if x.tee {
		if _, err := conn.Write(buf[:hdr]); err != nil {
			return x.afterWriteError(err)
		}
		from = hdr
	}
	for {
		n, rerr := io.ReadFull(r, body)
		if rerr == io.ErrUnexpectedEOF {
			rerr = io.EOF
		}
		if rerr != nil && rerr != io.EOF {
			x.outcome = OutcomeAborted
			return Result{}, rerr
		}
		if rp, ok := x.early(); ok {
			if rp.err != nil {
				return x.res, unavailable(x.a, "scan", fmt.Errorf("connection closed during the stream: %w", rp.err))
			}
			return s.verdict(x.a, rp.text, &x.res, &x.outcome)
		}
		if s.max > 0 && x.sent+int64(n) > s.max {
			return s.tooLarge(x.a, &x.res, &x.outcome, fmt.Errorf("more than %d bytes", s.max))
		}
		end := hdr
		if n > 0 {
			binary.BigEndian.PutUint32(buf[hdr:], uint32(n))
			end += 4 + n
		}
		if rerr == io.EOF {
			binary.BigEndian.PutUint32(buf[end:], 0)
			end += 4
		}
		if x.tee {
			conn.SetWriteDeadline(x.deadline())
		}
		if _, err := conn.Write(buf[from:end]); err != nil {
			return x.afterWriteError(err)
		}
		from = hdr
		x.sent += int64(n)
		if rerr == io.EOF {
			return x.finalReply()
		}
	}
}

// finalReply waits for the reply after the whole message was sent.
func (x *exchange) finalReply() (Result, error) {
	x.conn.SetReadDeadline(x.deadline())
	rp := <-x.replies
	if rp.err != nil {
		if x.ctx.Err() != nil && errors.Is(rp.err, os.ErrDeadlineExceeded) {
			rp.err = fmt.Errorf("%w (%w)", rp.err, context.Cause(x.ctx))
		}
		return x.res, unavailable(x.a, "reply", rp.err)
	}
	return x.s.verdict(x.a, rp.text, &x.res, &x.outcome)
}

type reply struct {
	text string
	err  error
}

// readReply reads one reply, up to its terminating NUL (or EOF), without
// the NUL and surrounding white space.
func readReply(conn net.Conn) (string, error) {
	var b []byte
	buf := make([]byte, 256)
	for len(b) < maxReply {
		n, err := conn.Read(buf)
		b = append(b, buf[:n]...)
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return strings.TrimSpace(string(b[:i])), nil
		}
		if err == io.EOF && len(b) > 0 {
			return strings.TrimSpace(string(b)), nil
		}
		if err == io.EOF {
			return "", errors.New("connection closed without a reply")
		}
		if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("reply longer than %d bytes", maxReply)
}

// verdict interprets a reply to INSTREAM.
func (s *Scanner) verdict(a *address, rep string, res *Result, outcome *string) (Result, error) {
	switch {
	case rep == "stream: OK":
		res.Clean = true
		*outcome = OutcomeClean
		return *res, nil
	case strings.HasPrefix(rep, "stream: ") && strings.HasSuffix(rep, " FOUND"):
		sig := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(rep, "stream: "), " FOUND"))
		if sig == "" {
			break
		}
		res.Signature = envelope.Sanitize(sig) // it ends up in replies and headers
		*outcome = OutcomeFound
		return *res, nil
	case strings.HasPrefix(rep, "INSTREAM size limit exceeded"):
		return s.tooLarge(a, res, outcome, fmt.Errorf("clamd: %q", rep))
	case strings.HasSuffix(rep, "ERROR"):
		return *res, unavailable(a, "scan", fmt.Errorf("clamd: %q", rep))
	}
	return *res, unavailable(a, "scan", fmt.Errorf("unexpected reply %q", rep))
}

func (s *Scanner) tooLarge(a *address, res *Result, outcome *string, cause error) (Result, error) {
	if s.skip {
		res.Skipped = true
		*outcome = OutcomeSkipped
		return *res, nil
	}
	*outcome = OutcomeTooLarge
	return *res, &failure.Error{Kind: failure.Temporary, Op: op, Reason: reason,
		Err: fmt.Errorf("%w: %s: %w", ErrTooLarge, a.name, cause)}
}

// report logs the scan and calls Observe.
func (s *Scanner) report(ctx context.Context, outcome string, res Result, err error, sent int64, d time.Duration) {
	if s.observe != nil {
		s.observe(outcome, d)
	}
	level := slog.LevelWarn
	switch outcome {
	case OutcomeClean, OutcomeAborted:
		level = slog.LevelDebug
	case OutcomeFound:
		level = slog.LevelInfo
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("result", outcome)}
	if res.Signature != "" {
		attrs = append(attrs, slog.String("signature", res.Signature))
	}
	attrs = append(attrs, slog.Duration("duration", d.Round(time.Microsecond)), slog.Int64("bytes", sent))
	if res.Server != "" {
		attrs = append(attrs, slog.String("server", res.Server))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	s.log.LogAttrs(ctx, level, "virus scan", attrs...)
}
