package testkit

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// serve answers one connection on a loopback listener with script, then
// closes it.
func serve(t *testing.T, script string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, script)
		c.Close()
	}()
	return l.Addr().String()
}

func TestLineConnPOP3(t *testing.T) {
	c := Dial(t, "tcp", serve(t, "+OK hi\r\n+OK 2 messages\r\none\r\n..dot\r\n.\r\n"))
	c.Expect("+OK hi")
	c.Expect("+OK 2")
	if got := c.Multi(); len(got) != 2 || got[0] != "one" || got[1] != ".dot" {
		t.Errorf("Multi = %q", got)
	}
	c.ExpectEOF()
}

func TestLineConnReply(t *testing.T) {
	c := Dial(t, "tcp", serve(t, "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"))
	if got := c.ExpectReply("250 "); got != "250 SIZE 10" {
		t.Errorf("ExpectReply = %q", got)
	}
	if got := c.Reply(); got != "" {
		t.Errorf("Reply at EOF = %q, want \"\"", got)
	}
}

func TestLogBufferWaitFor(t *testing.T) {
	var l LogBuffer
	go func() {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(&l, "level=INFO msg=one\nlevel=INFO msg=two user=alice\n")
	}()
	if got := l.WaitFor(t, 5*time.Second, "msg=two", "alice"); got != "level=INFO msg=two user=alice" {
		t.Errorf("WaitFor = %q", got)
	}
	if _, ok := l.Line("msg=three"); ok {
		t.Error("Line found a line that is not there")
	}
}

func TestSelfSignedCert(t *testing.T) {
	server, client := TLSConfigs(t)
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, "+OK tls\r\n")
		c.Close()
	}()
	c := Dial(t, "tcp", l.Addr().String())
	c.StartTLS(client) // verifies the chain and the name "localhost"
	c.Expect("+OK tls")
	certFile, keyFile := CertFiles(t, t.TempDir())
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("the written PEM files do not load: %v", err)
	}
}

func TestClockMovesOnlyOnAdvance(t *testing.T) {
	start := time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)
	c := NewClock(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now() = %v, want the start %v", got, start)
	}
	c.Advance(5 * time.Minute)
	if got, want := c.Now(), start.Add(5*time.Minute); !got.Equal(want) {
		t.Fatalf("after Advance(5m): Now() = %v, want %v", got, want)
	}
}
