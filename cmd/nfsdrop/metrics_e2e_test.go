package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// devServer runs `nfsdrop serve --dev DIR` and returns what it printed:
// the LMTP, POP3 and metrics addresses and the demo password.
type devServer struct {
	lmtp, pop3, metrics, password, dir string
	cmd                                *exec.Cmd
}

var (
	devLMTP     = regexp.MustCompile(`LMTP\s+(127\.0\.0\.1:\d+)`)
	devPOP3     = regexp.MustCompile(`POP3\s+(127\.0\.0\.1:\d+)`)
	devMetrics  = regexp.MustCompile(`metrics\s+(http://\S+/metrics)`)
	devPassword = regexp.MustCompile(`password (\S+)`)
)

func startDev(t *testing.T) *devServer {
	t.Helper()
	bin := testenv.Binary(t)
	dir := filepath.Join(t.TempDir(), "dev")
	cmd := exec.Command(bin, "serve", "--dev", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	d := &devServer{dir: dir, cmd: cmd}
	sc := bufio.NewScanner(out)
	deadline := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		line := sc.Text()
		if m := devLMTP.FindStringSubmatch(line); m != nil && d.lmtp == "" {
			d.lmtp = m[1]
		}
		if m := devPOP3.FindStringSubmatch(line); m != nil {
			d.pop3 = m[1]
		}
		if m := devMetrics.FindStringSubmatch(line); m != nil {
			d.metrics = m[1]
		}
		if m := devPassword.FindStringSubmatch(line); m != nil {
			d.password = m[1]
		}
		if strings.Contains(line, "Ctrl-C stops") {
			break
		}
	}
	go io.Copy(io.Discard, out)
	if d.lmtp == "" || d.pop3 == "" || d.metrics == "" || d.password == "" {
		t.Fatalf("serve --dev did not print its addresses and password: %+v", d)
	}
	return d
}

// scrape returns the value of every sample in the exposition text.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			vals[line[:i]] = v
		}
	}
	return vals
}

// pop3Dialog sends lines to a POP3 server and returns everything it said.
func pop3Dialog(t *testing.T, addr string, lines ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprint(c, strings.Join(lines, "\r\n")+"\r\n")
	all, _ := io.ReadAll(c)
	return string(all)
}

// TestMetricsDuringRealRun scrapes /metrics of a real serve --dev after
// LMTP deliveries and POP3 sessions, and checks the counters against what
// the run did.
func TestMetricsDuringRealRun(t *testing.T) {
	d := startDev(t)
	bin := testenv.Binary(t)
	before := scrape(t, d.metrics)
	for i := 0; i < 3; i++ {
		out, err := exec.Command(bin, "lmtp-send", "--server", d.lmtp, "--to", "demo@example.test").CombinedOutput()
		if err != nil {
			t.Fatalf("lmtp-send: %v\n%s", err, out)
		}
	}
	// One unknown recipient: refused with 550.
	exec.Command(bin, "lmtp-send", "--server", d.lmtp, "--to", "nobody@example.test").Run()

	out := pop3Dialog(t, d.pop3, "USER demo@example.test", "PASS "+d.password, "RETR 1", "RETR 2", "DELE 1", "QUIT")
	if !strings.Contains(out, "deleted") {
		t.Fatalf("POP3 session did not commit:\n%s", out)
	}
	bad := pop3Dialog(t, d.pop3, "USER demo@example.test", "PASS wrong", "QUIT")
	if !strings.Contains(bad, "-ERR [AUTH]") {
		t.Fatalf("wrong password not refused:\n%s", bad)
	}

	// A session is counted as ended just after its connection closes,
	// which is when the client sees EOF: wait for the gauge to settle.
	after := scrape(t, d.metrics)
	for deadline := time.Now().Add(5 * time.Second); after["nfsdrop_pop3_sessions"] != 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, d.metrics)
	}
	delta := func(k string) float64 { return after[k] - before[k] }
	for _, c := range []struct {
		key  string
		want float64
	}{
		{`nfsdrop_deliveries_total{code="250",outcome="delivered"}`, 3},
		{`nfsdrop_deliveries_total{code="550",outcome="refused"}`, 1},
		{`nfsdrop_lmtp_recipients_per_transaction_count`, 3},
		{`nfsdrop_store_fsync_duration_seconds_count{kind="file"}`, 3},
		{`nfsdrop_pop3_logins_total{result="ok"}`, 1},
		{`nfsdrop_pop3_logins_total{result="auth_failed"}`, 1},
		{`nfsdrop_pop3_retrieved_total`, 2},
		{`nfsdrop_pop3_deleted_total`, 1},
		{`nfsdrop_pop3_sessions_total{end="quit"}`, 2},
		{`nfsdrop_index_cache_total{result="miss"}`, 1},
		{`nfsdrop_userdb_duration_seconds_count{op="lookup"}`, 4},
		{`nfsdrop_userdb_duration_seconds_count{op="auth"}`, 2},
	} {
		if got := delta(c.key); got != c.want {
			t.Errorf("%s grew by %v, want %v", c.key, got, c.want)
		}
	}
	if delta(`nfsdrop_store_bytes_total`) <= 0 {
		t.Error("nfsdrop_store_bytes_total did not grow")
	}
	if after["nfsdrop_pop3_sessions"] != 0 {
		t.Errorf("open POP3 sessions gauge = %v after all sessions ended", after["nfsdrop_pop3_sessions"])
	}
}
