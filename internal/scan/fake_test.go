package scan

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// fakeClamd is a clamd stand-in on loopback that records what it received
// and answers as told.
type fakeClamd struct {
	t    *testing.T
	l    net.Listener
	addr string // in Options.Addresses syntax

	// reply returns the reply to an INSTREAM of data ("" closes the
	// connection without one). Default "stream: OK".
	reply func(data []byte) string
	// limit, when > 0, is clamd's StreamMaxLength: a longer stream gets
	// "INSTREAM size limit exceeded. ERROR" at once and the connection is
	// closed, as clamd does.
	limit int
	// hang: accept and never read or answer; hangAfter: read the whole
	// stream and never answer.
	hang, hangAfter bool

	mu       sync.Mutex
	conns    int
	chunks   [][]int  // chunk lengths of each INSTREAM, terminator excluded
	streams  [][]byte // data of each INSTREAM
	complete []bool   // whether the terminator came
	wg       sync.WaitGroup
	quit     chan struct{}
}

// newFake starts a fake clamd; setup, when given, configures it first.
func newFake(t *testing.T, network string, setup ...func(*fakeClamd)) *fakeClamd {
	t.Helper()
	f := &fakeClamd{t: t, quit: make(chan struct{})}
	var err error
	switch network {
	case "tcp":
		f.l, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			f.addr = "tcp:" + f.l.Addr().String()
		}
	case "unix":
		path := filepath.Join(testenv.ShortTempDir(t), "clamd.sock")
		f.l, err = net.Listen("unix", path)
		f.addr = "unix:" + path
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range setup {
		fn(f)
	}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeClamd) close() {
	select {
	case <-f.quit:
		return
	default:
	}
	close(f.quit)
	f.l.Close()
	f.wg.Wait()
}

func (f *fakeClamd) serve() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns++
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			go func() { <-f.quit; c.Close() }()
			f.handle(c)
		}()
	}
}

func (f *fakeClamd) handle(c net.Conn) {
	if f.hang {
		<-f.quit
		return
	}
	cmd := make([]byte, 0, 16)
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return
		}
		if b[0] == 0 {
			break
		}
		cmd = append(cmd, b[0])
	}
	switch string(cmd) {
	case "zPING":
		c.Write([]byte("PONG\x00"))
		return
	case "zINSTREAM":
	default:
		c.Write([]byte("UNKNOWN COMMAND\x00"))
		return
	}
	f.mu.Lock()
	i := len(f.streams)
	f.streams = append(f.streams, nil)
	f.chunks = append(f.chunks, nil)
	f.complete = append(f.complete, false)
	f.mu.Unlock()
	for {
		var n uint32
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			return
		}
		if n == 0 {
			break
		}
		f.mu.Lock()
		over := f.limit > 0 && len(f.streams[i])+int(n) > f.limit
		f.mu.Unlock()
		if over {
			c.Write([]byte("INSTREAM size limit exceeded. ERROR\x00"))
			return
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return
		}
		f.mu.Lock()
		f.streams[i] = append(f.streams[i], data...)
		f.chunks[i] = append(f.chunks[i], int(n))
		f.mu.Unlock()
	}
	f.mu.Lock()
	f.complete[i] = true
	data := f.streams[i]
	f.mu.Unlock()
	if f.hangAfter {
		<-f.quit
		return
	}
	rep := "stream: OK"
	if f.reply != nil {
		rep = f.reply(data)
	}
	if rep != "" {
		c.Write([]byte(rep + "\x00"))
	}
}

// stream returns what the i-th INSTREAM carried.
func (f *fakeClamd) stream(i int) (data []byte, chunks []int, complete bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.streams) {
		f.t.Fatalf("fake clamd got %d streams, want at least %d", len(f.streams), i+1)
	}
	return f.streams[i], f.chunks[i], f.complete[i]
}

func (f *fakeClamd) nconns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// waitStreams waits until n streams have ended (the handler has seen the
// terminator or given up), for tests where the client hangs up first.
func (f *fakeClamd) waitStreams(n int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		got := len(f.streams)
		f.mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeVirus finds "Fake.Virus" in data containing "VIRUS".
func fakeVirus(data []byte) string {
	if bytes.Contains(data, []byte("VIRUS")) {
		return "stream: Fake.Virus FOUND"
	}
	return "stream: OK"
}

func newScanner(t *testing.T, o Options) *Scanner {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// message returns n bytes of mail-like text.
func message(n int) []byte {
	line := "Lorem ipsum dolor sit amet, consectetur adipiscing elit 0123456789\r\n"
	return []byte(strings.Repeat(line, n/len(line)+1)[:n])
}

func wantTemp(t *testing.T, err error, is error) {
	t.Helper()
	fe := failure.As(err)
	if err == nil || fe.Kind != failure.Temporary {
		t.Fatalf("err = %v, want a Temporary failure", err)
	}
	if fe.Reason != "virus scanner unavailable" {
		t.Errorf("Reason = %q", fe.Reason)
	}
	if is != nil && !errors.Is(err, is) {
		t.Errorf("err = %v, want errors.Is %v", err, is)
	}
}

func TestChunking(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := newFake(t, network)
			s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 1000})
			for i, tc := range []struct {
				size   int
				chunks []int
			}{
				{2500, []int{1000, 1000, 500}},
				{2000, []int{1000, 1000}},
				{1, []int{1}},
				{0, nil},
			} {
				msg := message(tc.size)
				res, err := s.Scan(context.Background(), bytes.NewReader(msg))
				if err != nil {
					t.Fatal(err)
				}
				if !res.Clean || res.Infected() || res.Skipped || res.Server != f.addr {
					t.Errorf("size %d: result %+v", tc.size, res)
				}
				data, chunks, complete := f.stream(i)
				if !bytes.Equal(data, msg) || !complete {
					t.Errorf("size %d: clamd got %d bytes (complete %v)", tc.size, len(data), complete)
				}
				if !equalInts(chunks, tc.chunks) {
					t.Errorf("size %d: chunks %v, want %v", tc.size, chunks, tc.chunks)
				}
			}
		})
	}
}

// A reader that returns little at a time still gives full chunks.
func TestChunkingSlowReader(t *testing.T) {
	f := newFake(t, "tcp")
	s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 100})
	msg := message(250)
	if _, err := s.Scan(context.Background(), iotest.OneByteReader(bytes.NewReader(msg))); err != nil {
		t.Fatal(err)
	}
	data, chunks, _ := f.stream(0)
	if !bytes.Equal(data, msg) || !equalInts(chunks, []int{100, 100, 50}) {
		t.Errorf("got %d bytes in chunks %v", len(data), chunks)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		sig         string
		clean       bool
		unavailable bool
	}{
		{"ok", "stream: OK", "", true, false},
		{"found", "stream: Win.Test.EICAR_HDB-1 FOUND", "Win.Test.EICAR_HDB-1", false, false},
		{"found spaces", "stream: Some Name With Spaces FOUND", "Some Name With Spaces", false, false},
		{"found control characters", "stream: Bad\r\nName FOUND", "Bad??Name", false, false},
		{"error", "Can't allocate memory ERROR", "", false, true},
		{"empty signature", "stream:  FOUND", "", false, true},
		{"garbage", "hello", "", false, true},
		{"no reply", "", "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, "tcp", func(f *fakeClamd) { f.reply = func([]byte) string { return tc.reply } })
			s := newScanner(t, Options{Addresses: []string{f.addr}})
			res, err := s.Scan(context.Background(), bytes.NewReader(message(100)))
			if tc.unavailable {
				wantTemp(t, err, ErrUnavailable)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Clean != tc.clean || res.Signature != tc.sig {
				t.Errorf("result %+v", res)
			}
			verr := res.Err()
			if tc.sig == "" {
				if verr != nil {
					t.Errorf("Err() = %v for a clean result", verr)
				}
				return
			}
			fe := failure.As(verr)
			if fe == nil || fe.Kind != failure.Virus || fe.Detail != tc.sig {
				t.Errorf("Err() = %#v", verr)
			}
		})
	}
}

func TestTooLarge(t *testing.T) {
	const limit = 1000
	for _, tc := range []struct {
		name       string
		clientMax  int64 // Options.StreamMaxLength
		size       int
		onTooLarge string
		want       string // "clean", "skipped", "tempfail"
	}{
		{"server limit tempfail", 0, 5000, "", "tempfail"},
		{"server limit skip", 0, 5000, TooLargeSkip, "skipped"},
		{"server limit big message", 0, 1 << 20, TooLargeTempfail, "tempfail"},
		{"client limit tempfail", limit, 5000, TooLargeTempfail, "tempfail"},
		{"client limit skip", limit, 5000, TooLargeSkip, "skipped"},
		{"client limit exact", limit, limit, TooLargeTempfail, "clean"},
		{"client limit one more", limit, limit + 1, TooLargeSkip, "skipped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, "tcp", func(f *fakeClamd) { f.limit = limit })
			s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 300,
				StreamMaxLength: tc.clientMax, OnTooLarge: tc.onTooLarge, Timeout: 5 * time.Second})
			r := &countingReader{r: bytes.NewReader(message(tc.size))}
			res, err := s.Scan(context.Background(), r)
			switch tc.want {
			case "clean":
				if err != nil || !res.Clean {
					t.Fatalf("res %+v, err %v", res, err)
				}
			case "skipped":
				if err != nil || !res.Skipped || res.Clean || res.Server != f.addr {
					t.Fatalf("res %+v, err %v", res, err)
				}
			case "tempfail":
				wantTemp(t, err, ErrTooLarge)
				if errors.Is(err, ErrUnavailable) {
					t.Errorf("too large is not unavailable: %v", err)
				}
			}
			if tc.clientMax > 0 {
				// Known limit: no more than the limit went out, and the
				// message was not read much further (one chunk ahead).
				f.waitStreams(1)
				data, _, complete := f.stream(0)
				if len(data) > limit || complete != (tc.want == "clean") {
					t.Errorf("clamd got %d bytes, complete %v", len(data), complete)
				}
				if r.n > limit+300 {
					t.Errorf("read %d bytes of the message", r.n)
				}
			}
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestHungServer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hangAfter bool
		size      int
	}{
		{"never reads", false, 64 << 20}, // fills the socket buffers
		{"never reads small", false, 100},
		{"never answers", true, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, "tcp", func(f *fakeClamd) { f.hang, f.hangAfter = !tc.hangAfter, tc.hangAfter })
			s := newScanner(t, Options{Addresses: []string{f.addr}, Timeout: 200 * time.Millisecond})
			start := time.Now()
			_, err := s.Scan(context.Background(), bytes.NewReader(make([]byte, tc.size)))
			d := time.Since(start)
			wantTemp(t, err, ErrUnavailable)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("err = %v, want a deadline", err)
			}
			if d < 150*time.Millisecond || d > 2*time.Second {
				t.Errorf("took %v with a 200ms timeout", d)
			}
		})
	}
}

// The caller's context is honoured, sooner than Timeout.
func TestContext(t *testing.T) {
	f := newFake(t, "tcp", func(f *fakeClamd) { f.hangAfter = true })
	s := newScanner(t, Options{Addresses: []string{f.addr}, Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Scan(ctx, bytes.NewReader(message(100)))
	wantTemp(t, err, ErrUnavailable)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = s.Scan(ctx, bytes.NewReader(message(100)))
	wantTemp(t, err, ErrUnavailable)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled in the chain", err)
	}
}

func TestFailover(t *testing.T) {
	dead := "unix:" + filepath.Join(testenv.ShortTempDir(t), "none.sock")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "tcp:" + l.Addr().String()
	l.Close()
	f := newFake(t, "tcp")
	s := newScanner(t, Options{Addresses: []string{dead, refused, f.addr}})
	for range 2 {
		res, err := s.Scan(context.Background(), bytes.NewReader(message(10)))
		if err != nil || !res.Clean || res.Server != f.addr {
			t.Fatalf("res %+v, err %v", res, err)
		}
	}
	// The dead addresses are now tried last: the working one first.
	for _, a := range s.addrs[:2] {
		if a.downUntil.Load() == 0 {
			t.Errorf("%s not marked down", a.name)
		}
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if n := f.nconns(); n != 3 {
		t.Errorf("the working clamd got %d connections, want 3", n)
	}

	// Nothing reachable: Temporary, ErrUnavailable, naming both causes.
	f.close()
	_, err := s.Scan(context.Background(), bytes.NewReader(message(10)))
	wantTemp(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("err = %v", err)
	}
	if err := s.Ping(context.Background()); err == nil {
		t.Error("Ping with nothing reachable: no error")
	} else {
		wantTemp(t, err, ErrUnavailable)
	}
}

func TestReaderError(t *testing.T) {
	f := newFake(t, "tcp")
	s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 10})
	boom := failure.New(failure.TooLarge, "read message", "message too big", nil)
	r := io.MultiReader(bytes.NewReader(message(25)), iotest.ErrReader(boom))
	_, err := s.Scan(context.Background(), r)
	if err != boom {
		t.Fatalf("err = %v, want the reader's error unchanged", err)
	}
	f.waitStreams(1)
	if _, _, complete := f.stream(0); complete {
		t.Error("an unreadable message was sent complete")
	}
}

func TestPing(t *testing.T) {
	f := newFake(t, "unix")
	s := newScanner(t, Options{Addresses: []string{f.addr}})
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := newFake(t, "tcp", func(f *fakeClamd) { f.hang = true })
	s = newScanner(t, Options{Addresses: []string{h.addr}, Timeout: 100 * time.Millisecond})
	wantTemp(t, s.Ping(context.Background()), ErrUnavailable)
}

func TestTee(t *testing.T) {
	f := newFake(t, "tcp", func(f *fakeClamd) { f.reply = fakeVirus })
	s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 4096})
	for i, tc := range []struct {
		msg []byte
		sig string
	}{
		{message(100_000), ""},
		{append(message(50_000), "VIRUS"...), "Fake.Virus"},
		{nil, ""},
	} {
		r, verdict := s.Tee(context.Background(), iotest.HalfReader(bytes.NewReader(tc.msg)))
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.msg) {
			t.Errorf("%d: Tee passed %d bytes, want %d", i, len(got), len(tc.msg))
		}
		res, err := verdict()
		if err != nil || res.Signature != tc.sig || res.Clean != (tc.sig == "") {
			t.Errorf("%d: res %+v, err %v", i, res, err)
		}
		if res2, err2 := verdict(); res2 != res || err2 != err {
			t.Errorf("second call: %+v %v", res2, err2)
		}
		data, _, _ := f.stream(i)
		if !bytes.Equal(data, tc.msg) {
			t.Errorf("%d: clamd got %d bytes", i, len(data))
		}
	}
}

// When the scan ends early (too large, clamd gone), the reader still passes
// every byte through, and the verdict says what happened.
func TestTeeScanEndsEarly(t *testing.T) {
	f := newFake(t, "tcp", func(f *fakeClamd) { f.limit = 10_000 })
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"server limit", Options{OnTooLarge: TooLargeSkip}, "skipped"},
		{"client limit", Options{StreamMaxLength: 10_000}, "tempfail"},
		{"hung", Options{Timeout: 100 * time.Millisecond}, "unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Addresses = []string{f.addr}
			tc.o.ChunkSize = 1000
			if tc.want == "unavailable" {
				h := newFake(t, "tcp", func(f *fakeClamd) { f.hang = true })
				tc.o.Addresses = []string{h.addr}
			}
			s := newScanner(t, tc.o)
			msg := message(4 << 20)
			r, verdict := s.Tee(context.Background(), bytes.NewReader(msg))
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("Tee passed %d of %d bytes, err %v", len(got), len(msg), err)
			}
			res, err := verdict()
			switch tc.want {
			case "skipped":
				if err != nil || !res.Skipped {
					t.Errorf("res %+v, err %v", res, err)
				}
			case "tempfail":
				wantTemp(t, err, ErrTooLarge)
			case "unavailable":
				wantTemp(t, err, ErrUnavailable)
			}
		})
	}
}

func TestTeeAbandoned(t *testing.T) {
	f := newFake(t, "tcp")
	s := newScanner(t, Options{Addresses: []string{f.addr}, ChunkSize: 100})

	// The verdict asked for before EOF: an error, nothing complete sent.
	r, verdict := s.Tee(context.Background(), bytes.NewReader(message(1000)))
	io.ReadFull(r, make([]byte, 300))
	if res, err := verdict(); err == nil || res.Clean {
		t.Errorf("verdict before EOF: res %+v, err %v", res, err)
	}

	// The reader fails: the same error from the reader and the verdict.
	boom := errors.New("boom")
	r, verdict = s.Tee(context.Background(), io.MultiReader(bytes.NewReader(message(250)), iotest.ErrReader(boom)))
	if _, err := io.ReadAll(r); err != boom {
		t.Errorf("ReadAll: %v", err)
	}
	if _, err := verdict(); err != boom {
		t.Errorf("verdict: %v", err)
	}
	f.waitStreams(2)
	for i := range 2 {
		if _, _, complete := f.stream(i); complete {
			t.Errorf("stream %d: sent complete", i)
		}
	}
}

// Observe gets one outcome per scan; the log has one line per scan at the
// level of its outcome.
func TestObserveAndLog(t *testing.T) {
	f := newFake(t, "tcp", func(f *fakeClamd) { f.limit, f.reply = 1000, fakeVirus })
	var mu sync.Mutex
	var outcomes []string
	var logBuf bytes.Buffer
	s := newScanner(t, Options{
		Addresses:  []string{f.addr},
		OnTooLarge: TooLargeSkip,
		Logger:     slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observe: func(result string, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if d <= 0 {
				t.Errorf("Observe(%q, %v)", result, d)
			}
			outcomes = append(outcomes, result)
		},
	})
	s.Scan(context.Background(), strings.NewReader("clean"))
	s.Scan(context.Background(), strings.NewReader("VIRUS"))
	s.Scan(context.Background(), bytes.NewReader(message(5000)))
	s.Scan(context.Background(), iotest.ErrReader(errors.New("boom")))
	f.close()
	s.Scan(context.Background(), strings.NewReader("clean"))

	want := []string{OutcomeClean, OutcomeFound, OutcomeSkipped, OutcomeAborted, OutcomeUnavailable}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(outcomes, " ") != strings.Join(want, " ") {
		t.Errorf("outcomes %q, want %q", outcomes, want)
	}
	lines := strings.Split(strings.TrimSpace(logBuf.String()), "\n")
	for i, w := range []string{
		"level=DEBUG msg=\"virus scan\" result=clean duration=",
		"level=INFO msg=\"virus scan\" result=found signature=Fake.Virus duration=",
		"level=WARN msg=\"virus scan\" result=skipped duration=",
		"level=DEBUG msg=\"virus scan\" result=aborted duration=",
		"level=WARN msg=\"virus scan\" result=unavailable duration=",
	} {
		if i >= len(lines) || !strings.Contains(lines[i], w) {
			t.Errorf("log line %d: want %q in\n%s", i, w, logBuf.String())
		}
	}
	if !strings.Contains(lines[0], "server="+f.addr) || !strings.Contains(lines[0], "bytes=5") {
		t.Errorf("log line 0 lacks server or bytes: %s", lines[0])
	}
}

type syncWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{}, "no clamd address"},
		{Options{Addresses: []string{"unix:clamd.ctl"}}, "must be absolute"},
		{Options{Addresses: []string{"tcp:localhost"}}, "is not"},
		{Options{Addresses: []string{":3310"}}, "is not"},
		{Options{Addresses: []string{"tcp:localhost:0"}}, "port"},
		{Options{Addresses: []string{"127.0.0.1:3310", "tcp:127.0.0.1:3310"}}, "listed twice"},
		{Options{Addresses: []string{"unix:/x"}, Timeout: -1}, "negative timeout"},
		{Options{Addresses: []string{"unix:/x"}, ChunkSize: -1}, "chunk size"},
		{Options{Addresses: []string{"unix:/x"}, ChunkSize: MaxChunkSize + 1}, "chunk size"},
		{Options{Addresses: []string{"unix:/x"}, StreamMaxLength: -1}, "StreamMaxLength"},
		{Options{Addresses: []string{"unix:/x"}, OnTooLarge: "drop"}, "OnTooLarge"},
	} {
		if _, err := New(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
	s, err := New(Options{Addresses: []string{"unix:/run/clamav/clamd.ctl", "[::1]:3310", "tcp:clamd.example.org:3310"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.timeout != DefaultTimeout || s.chunk != DefaultChunkSize || s.skip {
		t.Errorf("defaults: %+v", s)
	}
}

func TestStatusHeader(t *testing.T) {
	for _, tc := range []struct {
		res  Result
		err  error
		want string
	}{
		{Result{Clean: true}, nil, "X-Virus-Status: Clean\r\n"},
		{Result{Signature: "Test.EICAR.UNOFFICIAL"}, nil, "X-Virus-Status: Infected (Test.EICAR.UNOFFICIAL)\r\n"},
		{Result{Signature: "Bad\r\nX-Evil: 1"}, nil, "X-Virus-Status: Infected (Bad??X-Evil: 1)\r\n"},
		{Result{Skipped: true}, nil, "X-Virus-Status: Unscanned (too large)\r\n"},
		{Result{}, ErrUnavailable, "X-Virus-Status: Unscanned (scanner unavailable)\r\n"},
	} {
		if got := StatusHeader(tc.res, tc.err); got != tc.want {
			t.Errorf("StatusHeader(%+v, %v) = %q, want %q", tc.res, tc.err, got, tc.want)
		}
	}
}
