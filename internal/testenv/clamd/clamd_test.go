package clamd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// instream sends data with INSTREAM on network/address and returns the reply.
func instream(t *testing.T, network, address string, data []byte) string {
	t.Helper()
	c, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b bytes.Buffer
	b.WriteString("zINSTREAM\x00")
	binary.Write(&b, binary.BigEndian, uint32(len(data)))
	b.Write(data)
	binary.Write(&b, binary.BigEndian, uint32(0))
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	rep, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(string(rep), "\x00")
}

func TestStart(t *testing.T) {
	in := StartT(t, Options{})
	if got := in.Addresses(); len(got) != 2 || got[0] != "unix:"+in.Socket || got[1] != "tcp:"+in.TCP {
		t.Errorf("Addresses() = %q", got)
	}
	if rep := instream(t, "unix", in.Socket, []byte("hello\n")); rep != "stream: OK" {
		t.Errorf("clean data over the Unix socket: %q", rep)
	}
	if rep := instream(t, "tcp", in.TCP, []byte("x"+EICAR+"y")); rep != "stream: "+Signature+" FOUND" {
		t.Errorf("EICAR over TCP: %q", rep)
	}
	pid := in.PID()
	in.Kill()
	in.Kill() // twice is harmless
	if _, err := net.Dial("unix", in.Socket); err == nil {
		t.Errorf("clamd (pid %d) still answers after Kill", pid)
	}
}
