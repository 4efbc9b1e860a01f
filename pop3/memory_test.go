package pop3

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// BenchmarkIdleSessionMemory measures what an idle session costs the
// server, to size max_sessions: N connections that only got the greeting
// (unauthenticated) or logged in and listed the mailbox (authenticated).
// Both ends of each connection live in this process, so the cost of N bare
// loopback connection pairs (accepted and held, no session) is measured
// too and subtracted: "net" is the session's own cost (goroutine stack,
// buffers, session state), "gross" adds its server-side net.Conn. Kernel
// socket memory is not in the Go heap and not counted.
//
//	POP3_IDLE_SESSIONS=8000 go test -run '^$' -bench IdleSessionMemory -benchtime 1x ./pop3/
//
// Each connection takes two descriptors here (RLIMIT_NOFILE bounds N).
func BenchmarkIdleSessionMemory(b *testing.B) {
	n := 2000
	if s := os.Getenv("POP3_IDLE_SESSIONS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		login bool
	}{{"unauthenticated", false}, {"authenticated", true}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				bare := bareConnCost(b, n)
				total := sessionCost(b, n, tc.login)
				b.ReportMetric(float64(total)/float64(n), "gross-B/session")
				b.ReportMetric(float64(total-bare/2)/float64(n), "server-B/session")
				b.ReportMetric(float64(total-bare)/float64(n), "net-B/session")
			}
		})
	}
}

// bareConnCost is the memory of n loopback connection pairs, both ends.
func bareConnCost(b *testing.B, n int) int64 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, n)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	before := heapAndStacks()
	conns := make([]net.Conn, 0, 2*n)
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c, <-accepted)
	}
	after := heapAndStacks()
	for _, c := range conns {
		c.Close()
	}
	return int64(after) - int64(before)
}

// sessionCost is the memory of n idle POP3 sessions with their client
// ends (raw connections, the client reading nothing ahead).
func sessionCost(b *testing.B, n int, login bool) int64 {
	opts := baseOptions()
	opts.MaxPerIP = 0
	s := New(newFakeBackend(testMessages...), opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	defer s.Shutdown(b.Context())
	one := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 512)
		readUntil(b, c, buf, "\r\n") // greeting
		if login {
			c.Write([]byte("USER alice\r\nPASS secret word\r\nLIST\r\n"))
			readUntil(b, c, buf, "\r\n.\r\n")
		}
		return c
	}
	one().Close() // pools and lazily built state exist before the baseline
	before := heapAndStacks()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = one()
	}
	after := heapAndStacks()
	runtime.KeepAlive(conns)
	for _, c := range conns {
		c.Close()
	}
	return int64(after) - int64(before)
}

// readUntil reads from c until what was read ends with end.
func readUntil(b *testing.B, c net.Conn, buf []byte, end string) {
	got := make([]byte, 0, 256)
	for len(got) < len(end) || string(got[len(got)-len(end):]) != end {
		k, err := c.Read(buf)
		if err != nil {
			b.Fatalf("read: %v (got %q)", err, got)
		}
		got = append(got, buf[:k]...)
	}
}
