package postfix

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// fakeLMTP is a minimal LMTP responder (RFC 2033) for testing the harness
// itself: it accepts every recipient whose local part is not "unknown" and
// records the messages it got.
type fakeLMTP struct {
	l  net.Listener
	mu sync.Mutex
	// got maps recipient to the messages delivered to it.
	got map[string][]string
	wg  sync.WaitGroup
}

func startFakeLMTP(t *testing.T, network, addr string) *fakeLMTP {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	if network == "unix" {
		os.Chmod(addr, 0o666)
	}
	f := &fakeLMTP{l: l, got: map[string][]string{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.serve(c) }()
		}
	}()
	t.Cleanup(func() { l.Close(); f.wg.Wait() })
	return f
}

func (f *fakeLMTP) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := func(s string) { w.WriteString(s + "\r\n"); w.Flush() }
	reply("220 fake LMTP")
	var rcpts []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "LHLO":
			reply("250-fake\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES")
		case "MAIL":
			rcpts = nil
			reply("250 2.1.0 ok")
		case "RCPT":
			addr := strings.Trim(strings.TrimPrefix(strings.ToUpper(arg[:3])+arg[3:], "TO:"), "<>")
			if strings.HasPrefix(addr, "unknown@") {
				reply("550 5.1.1 no such user")
				continue
			}
			rcpts = append(rcpts, addr)
			reply("250 2.1.5 ok")
		case "DATA":
			reply("354 go ahead")
			var msg strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				msg.WriteString(strings.TrimPrefix(l, "."))
			}
			f.mu.Lock()
			for _, rc := range rcpts {
				f.got[rc] = append(f.got[rc], msg.String())
			}
			f.mu.Unlock()
			for _, rc := range rcpts {
				reply("250 2.0.0 <" + rc + "> fake-saved")
			}
			rcpts = nil
		case "RSET", "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			reply("500 5.5.2 what")
		}
	}
}

func (f *fakeLMTP) count(rcpt string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got[rcpt])
}

func message(id, subject string) []byte {
	return []byte("From: a@x.test\nMessage-ID: <" + id + ">\nSubject: " + subject + "\n\nbody line\n.\nlast line\n")
}

// TestInstance starts an instance delivering a local domain over LMTP/TCP
// and a virtual domain over LMTP on a Unix socket, checks its
// configuration passes "postfix check", follows messages through the log,
// and checks Stop leaves nothing running.
func TestInstance(t *testing.T) {
	port := testenv.FreePort(t)
	tcp := startFakeLMTP(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	sockDir := testenv.ShortTempDir(t)
	os.Chmod(sockDir, 0o755) // the lmtp client runs as postfix
	sock := filepath.Join(sockDir, "lmtp")
	unix := startFakeLMTP(t, "unix", sock)

	start := time.Now()
	in := StartT(t, Options{
		MailboxTransport: fmt.Sprintf("lmtp:inet:127.0.0.1:%d", port),
		LocalDomains:     []string{"example.test"},
		VirtualDomains:   []string{"virt.test"},
		Extra:            []string{"transport_maps = inline:{ virt.test=lmtp:unix:" + sock + " }"},
	})
	t.Logf("postfix started in %s", time.Since(start).Round(time.Millisecond))

	if out, err := in.Check(); err != nil || strings.Contains(out, in.Dir) {
		t.Fatalf("postfix check: %v\n%s", err, out)
	}
	for _, l := range in.Lines(regexp.MustCompile(`(fatal|panic|error):|warning: .*` + regexp.QuoteMeta(in.Dir))) {
		t.Errorf("mail log: %s", l)
	}

	if err := in.Sendmail("a@x.test", []string{"alice@example.test", "unknown@example.test", "bob@virt.test"}, message("m1@x.test", "one")); err != nil {
		t.Fatal(err)
	}
	qid := in.QueueID(t, "m1@x.test", 10*time.Second)
	in.WaitLog(t, regexp.MustCompile(qid+`: to=<alice@example.test>, .*relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent \(250 2\.0\.0 <alice@example\.test> fake-saved\)`), 1, 10*time.Second)
	in.WaitLog(t, regexp.MustCompile(qid+`: to=<bob@virt.test>, relay=[^,]*\[`+regexp.QuoteMeta(sock)+`\], .*status=sent`), 1, 10*time.Second)
	in.WaitLog(t, regexp.MustCompile(qid+`: to=<unknown@example.test>, .*dsn=5\.1\.1, status=bounced \(host .* said: 550 5\.1\.1 no such user`), 1, 10*time.Second)
	if n := tcp.count("alice@example.test"); n != 1 {
		t.Errorf("alice got %d messages over TCP, want 1", n)
	}
	if n := unix.count("bob@virt.test"); n != 1 {
		t.Errorf("bob got %d messages over the Unix socket, want 1", n)
	}
	tcp.mu.Lock()
	body := tcp.got["alice@example.test"][0]
	tcp.mu.Unlock()
	if !strings.Contains(body, "\r\n..\r\n") && !strings.Contains(body, "\r\n.\r\n") {
		t.Errorf("the line holding only a dot was lost (sendmail -i): %q", body)
	}
	if err := in.Flush(); err != nil {
		t.Fatal(err)
	}

	pid, err := in.MasterPID()
	if err != nil {
		t.Fatal(err)
	}
	in.Stop()
	if isOurMaster(pid) {
		t.Errorf("master %d still running after Stop", pid)
	}
	if _, err := os.Stat(in.Dir); !os.IsNotExist(err) {
		t.Errorf("instance directory not removed: %v", err)
	}
	// (Not "stopping the Postfix mail system": postfix-script logs it
	// through postlogd just before killing the master, so on a busy
	// machine the line can be lost.)
	if !strings.Contains(in.Log(), "message-id=<m1@x.test>") {
		t.Errorf("Log() after Stop lost the log:\n%s", in.Log())
	}
	in.Stop() // twice is fine
}

// TestStopKillsMaster checks the fallback: a master whose configuration
// is gone (so "postfix stop" cannot work) is still killed by its PID.
func TestStopKillsMaster(t *testing.T) {
	in := StartT(t, Options{MailboxTransport: "lmtp:inet:127.0.0.1:9"})
	pid, err := in.MasterPID()
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(in.ConfigDir, "main.cf"))
	in.Stop()
	if isOurMaster(pid) {
		t.Errorf("master %d still running after Stop", pid)
	}
}
