package packaging_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/haproxy"
)

// TestHAProxy: contrib/haproxy/haproxy.cfg, with its addresses moved to
// loopback, passes haproxy -c; then POP3 and POP3S from a client address
// of their own (127.0.0.2, 127.0.0.3) go through HAProxy to nfsdrop pop3d
// with a PROXY v2 header, and nfsdrop's session log names the client, not
// HAProxy. LMTP through HAProxy delivers, and the health checks pass
// without nfsdrop refusing their PROXY headers.
func TestHAProxy(t *testing.T) {
	t.Parallel()
	testenv.Require(t, haproxy.Package, "haproxy")
	b := packages(t)
	w := newWorld(t, conf{})
	cert, key := makeCert(t, w.dir)
	pop3 := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pop3s := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	lmtp := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	w.configure(conf{
		lmtpListen:     []string{"tcp:" + lmtp},
		pop3Listen:     []string{pop3},
		pop3ListenTLS:  []string{pop3s},
		tlsCert:        cert,
		tlsKey:         key,
		allowPlaintext: true,
		proxyNetworks:  []string{"127.0.0.1/32"},
	})
	pd := start(t, filepath.Join(w.dir, "pop3d.log"), nil, b.bin, "pop3d", "-c", w.cfg)
	pd.waitLog(10*time.Second, "msg=listening")
	ld := start(t, filepath.Join(w.dir, "lmtpd.log"), nil, b.bin, "lmtpd", "-c", w.cfg)
	ld.waitLog(10*time.Second, "msg=listening")

	fe := map[string]string{
		"pop3":  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"pop3s": fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"lmtp":  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
	cfgText := repoFile(t, "contrib/haproxy/haproxy.cfg")
	for _, n := range []string{"1", "2", "3"} {
		cfgText = strings.NewReplacer(
			"drop"+n+".example.org:110", pop3,
			"drop"+n+".example.org:995", pop3s,
			"drop"+n+".example.org:24", lmtp,
		).Replace(cfgText)
	}
	cfgText = strings.NewReplacer(
		"bind :110", "bind "+fe["pop3"],
		"bind :995", "bind "+fe["pop3s"],
		"bind 192.0.2.1:24", "bind "+fe["lmtp"],
		"src 192.0.2.0/24", "src 127.0.0.0/8",
		// The test does not need (or may not have) 20000 descriptors.
		"maxconn 20000", "maxconn 100",
	).Replace(cfgText)
	if m := regexp.MustCompile(`\w+\.example\.org|192\.0\.2\.`).FindString(cfgText); m != "" {
		t.Fatalf("haproxy.cfg: %s left after substitution:\n%s", m, cfgText)
	}
	// Ready on the LMTP frontend: its probe connection reaches lmtpd as
	// an empty session, which no check below counts.
	h := haproxy.StartT(t, haproxy.Options{Config: cfgText, Dir: w.dir, Ready: []string{fe["lmtp"]}})

	// POP3 from 127.0.0.2.
	c := dialFrom(t, "127.0.0.2", fe["pop3"])
	pop3Login(t, c)
	line := pd.waitLog(10*time.Second, `msg="pop3 session"`, "user="+mailUser, "remote=127.0.0.2:")
	if !strings.Contains(line, "via=127.0.0.1:") || !strings.Contains(line, "tls=false") {
		t.Errorf("POP3 session line: %s", line)
	}

	// POP3S from 127.0.0.3: the PROXY header, then nfsdrop's TLS.
	c = tlsClient(dialFrom(t, "127.0.0.3", fe["pop3s"]))
	if err := c.(*tls.Conn).Handshake(); err != nil {
		t.Fatalf("POP3S through HAProxy: %v", err)
	}
	pop3Login(t, c)
	line = pd.waitLog(10*time.Second, `msg="pop3 session"`, "user="+mailUser, "remote=127.0.0.3:")
	if !strings.Contains(line, "tls=true") {
		t.Errorf("POP3S session line: %s", line)
	}

	// LMTP through HAProxy.
	lmtpDeliver(t, dialRetry(t, "tcp", fe["lmtp"], 5*time.Second), "through haproxy")
	w.waitMessages(1, 10*time.Second)

	// Health checks: HAProxy's own sessions, with a LOCAL PROXY header,
	// end with QUIT (pop3 and pop3s), and nothing was refused.
	pd.waitLog(15*time.Second, `msg="pop3 session"`, "remote=127.0.0.1:", "end=quit", "tls=false")
	pd.waitLog(15*time.Second, `msg="pop3 session"`, "remote=127.0.0.1:", "end=quit", "tls=true")
	for _, bad := range []string{"PROXY header refused", "bad PROXY header", "session refused"} {
		if strings.Contains(pd.Log(), bad) {
			t.Errorf("pop3d log has %q:\n%s", bad, pd.Log())
		}
	}
	if log := h.Log(); strings.Contains(log, " is DOWN") {
		t.Errorf("HAProxy marked a server down:\n%s", log)
	}
}

// dialFrom connects to addr from the local address src.
func dialFrom(t testing.TB, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err = d.Dial("tcp", addr); err == nil {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			return c
		}
	}
	t.Fatalf("connecting from %s to %s: %v", src, addr, err)
	return nil
}
