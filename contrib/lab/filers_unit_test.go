package lab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// TestFilersConfig: the front end's configuration names both volumes
// under the local mail root, each its own directory, and the users file
// names each user's volume in the home= extra field (a colon would split
// the home column).
func TestFilersConfig(t *testing.T) {
	var c struct {
		Store struct {
			MailRoot string `toml:"mail_root"`
			Volumes  []struct {
				Name, Path   string
				NewMailboxes bool `toml:"new_mailboxes"`
			}
		}
		Userdb struct {
			DefaultDomain string `toml:"default_domain"`
		}
	}
	if _, err := toml.Decode(FilersConfig("mx1.test", VMAddr(1), 30*time.Second), &c); err != nil {
		t.Fatal(err)
	}
	if c.Store.MailRoot != FilersMailRoot || c.Userdb.DefaultDomain != "example.test" {
		t.Errorf("mail_root %q, default_domain %q", c.Store.MailRoot, c.Userdb.DefaultDomain)
	}
	if len(c.Store.Volumes) != 2 || c.Store.Volumes[0].Name != VolGanesha || c.Store.Volumes[0].Path != "/srv/mail/ganesha" ||
		c.Store.Volumes[1].Name != VolKNFSD || c.Store.Volumes[1].Path != "/srv/mail/knfsd" || !c.Store.Volumes[1].NewMailboxes {
		t.Errorf("volumes: %+v", c.Store.Volumes)
	}
	users := []string{FilersUser(1), FilersUser(2)}
	vol := map[string]string{users[0]: VolGanesha, users[1]: VolKNFSD}
	if got, want := filersUsersFile(users, vol), "u1@example.test:{PLAIN}pw::::::home=ganesha:example.test/u1\nu2@example.test:{PLAIN}pw::::::home=knfsd:example.test/u2\n"; got != want {
		t.Errorf("users file:\n%s\nwant:\n%s", got, want)
	}
	if got, want := filersLegacyUsersFile(users, vol), "u1@example.test:{PLAIN}pw::::/srv/mail/ganesha/example.test/u1::\n"; !strings.HasPrefix(got, want) {
		t.Errorf("legacy users file:\n%s\nwant first line:\n%s", got, want)
	}
}

// TestParseThreadSample: thread counts are summed per daemon (a restarted
// daemon may briefly have two processes), stand-in counters kept per
// volume and kind, other lines ignored.
func TestParseThreadSample(t *testing.T) {
	s := parseThreadSample(time.Unix(1, 0), "threads lmtpd 12\nthreads pop3d 7\nthreads lmtpd 3\nops knfsd.lmtpd 40\nexit=0\ngarbage\nthreads pop3d \n")
	if s.Threads["lmtpd"] != 15 || s.Threads["pop3d"] != 7 || s.Ops["knfsd.lmtpd"] != 40 || len(s.Threads) != 2 || len(s.Ops) != 1 {
		t.Errorf("%+v", s)
	}
}

// TestFilersWindow: a window's rates come from the samples at its ends,
// its thread peaks from the samples inside it only.
func TestFilersWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	r := &filersRun{f: &FilersLab{ScaleOutLab: &ScaleOutLab{}}, threads: map[string][]ThreadSample{}}
	r.counts = []countSample{
		{At: at(0), Acked: map[string]int{VolGanesha: 10, VolKNFSD: 10}, TempFail: map[string]int{}, Deferred: map[string]int{}},
		{At: at(10), Acked: map[string]int{VolGanesha: 30, VolKNFSD: 10}, TempFail: map[string]int{VolKNFSD: 4}, Deferred: map[string]int{VolKNFSD: 1}},
		{At: at(20), Acked: map[string]int{VolGanesha: 50, VolKNFSD: 40}, TempFail: map[string]int{VolKNFSD: 4}, Deferred: map[string]int{VolKNFSD: 1}},
	}
	r.threads["mx1.test"] = []ThreadSample{
		{At: at(1), Threads: map[string]int{"lmtpd": 9}, Ops: map[string]int{"knfsd.lmtpd": 5}},
		{At: at(5), Threads: map[string]int{"lmtpd": 200, "pop3d": 8}, Ops: map[string]int{"knfsd.lmtpd": 5}},
		{At: at(9), Threads: map[string]int{"lmtpd": 11}, Ops: map[string]int{"knfsd.lmtpd": 25}},
		{At: at(15), Threads: map[string]int{"lmtpd": 500}},
	}
	w := &Window{Start: at(0), End: at(10)}
	r.fill(w)
	if w.Acked[VolGanesha] != 2 || w.Acked[VolKNFSD] != 0 || w.TempFail[VolKNFSD] != 4 || w.OtherDeferred[VolKNFSD] != 1 {
		t.Errorf("counts: %+v %+v %+v", w.Acked, w.TempFail, w.OtherDeferred)
	}
	if w.PeakThreads["mx1 lmtpd"] != 200 || w.PeakThreads["mx1 pop3d"] != 8 {
		t.Errorf("peaks: %+v", w.PeakThreads)
	}
	if w.Ops[VolKNFSD] != 2 {
		t.Errorf("ops/s: %+v", w.Ops)
	}
}

// TestMountWords: extra mounts reach the kernel command line, in order,
// as guest/init reads them.
func TestMountWords(t *testing.T) {
	l := &Lab{NFS: &NFSServer{Addr: ServerAddr, Export: "/x/export"}}
	v := &VM{lab: l, Config: VMConfig{Mounts: []Mount{
		{Source: "/mnt/lab/mailg", Point: "/srv/mail/ganesha", Opts: "bind"},
		{Source: KNFSAddr + ":" + KNFSExport, Point: "/srv/mail/knfsd", Opts: "vers=4.1,proto=tcp"},
	}}}
	want := "lab.mount=/mnt/lab/mailg;/srv/mail/ganesha;bind lab.mount=127.77.0.8:/srv/export;/srv/mail/knfsd;vers=4.1,proto=tcp"
	if got := v.cmdline(); !strings.Contains(got, want) {
		t.Errorf("command line %q lacks %q", got, want)
	}
	if lastOctet(KNFSAddr) != 8 || lastOctet(VMAddr(3)) != 13 {
		t.Errorf("lastOctet")
	}
}

// TestMoveHomeCommand: after a move, only the moved user's home= names
// the new volume (u1 and u10 share a prefix).
func TestMoveHomeCommand(t *testing.T) {
	if _, err := exec.LookPath("sed"); err != nil {
		t.Skip("no sed")
	}
	users := []string{FilersUser(1), FilersUser(10)}
	vol := map[string]string{users[0]: VolGanesha, users[1]: VolGanesha}
	f := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(f, []byte(filersUsersFile(users, vol)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-c", moveHomeCommand(users[0], VolGanesha, VolKNFSD, f)).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got, _ := os.ReadFile(f)
	vol[users[0]] = VolKNFSD
	if want := filersUsersFile(users, vol); string(got) != want {
		t.Errorf("users file after the move:\n%s\nwant:\n%s", got, want)
	}
}

// TestTermCommand runs the SIGTERM-and-time command under the host's sh
// against two real processes (with its /tmp/ paths moved to a test
// directory and usleep stood in by sleep): both must be reported gone,
// with exit times from /proc/uptime that parse.
func TestTermCommand(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "usleep"), []byte("#!/bin/sh\nexec sleep 0.1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"lmtpd", "pop3d"} {
		// lmtpd ignores SIGTERM for a while: it is still there when the
		// threads are listed.
		c := exec.Command("sleep", "60")
		if d == "lmtpd" {
			c = exec.Command("sh", "-c", `trap "" TERM; sleep 1`)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		t.Cleanup(func() { _ = c.Process.Kill(); <-done })
		if err := os.WriteFile(filepath.Join(dir, "pid."+d), []byte(strconv.Itoa(c.Process.Pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := strings.ReplaceAll(termCommand(20*time.Second, 300*time.Millisecond), "/tmp/", dir+"/")
	c := exec.Command("sh", "-c", cmd)
	c.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	res := newTermResult("mx1")
	res.Running = map[string]bool{"lmtpd": true, "pop3d": true}
	old := parseTermOutput(string(out), res)
	if len(old) != 2 || len(res.Exited) != 2 {
		t.Fatalf("parsed %v and %v from %q", old, res.Exited, out)
	}
	if len(res.MainDone) != 2 || res.MainDone["lmtpd"] > res.Exited["lmtpd"] {
		t.Errorf("main done %v, gone %v", res.MainDone, res.Exited)
	}
	if res.Exited["lmtpd"] < 500*time.Millisecond || len(res.Held) == 0 {
		t.Errorf("the process ignoring SIGTERM: exit after %v, threads listed %v (output %q)", res.Exited["lmtpd"], res.Held, out)
	}
	for d, e := range res.Exited {
		if e < 0 || e > 10*time.Second {
			t.Errorf("%s: exit time %v", d, e)
		}
	}
	if p := res.problems(); len(p) != 0 {
		t.Errorf("problems %v", p)
	}
}

// TestTermResultProblems: a daemon whose code did not stop, one that took
// longer than the bound, and a restart that died are each a problem; a
// process held by the kernel after its code stopped in time is not.
func TestTermResultProblems(t *testing.T) {
	r := newTermResult("mx1")
	r.MainDone["pop3d"] = labShutdownTimeout + time.Minute
	r.Exited["pop3d"] = labShutdownTimeout + time.Minute
	r.Running["pop3d"] = true
	p := r.problems()
	if len(p) != 2 || !strings.Contains(p[0], "lmtpd did not stop") || !strings.Contains(p[1], "pop3d took") {
		t.Errorf("problems %q", p)
	}
	r = newTermResult("mx1")
	for _, d := range []string{"lmtpd", "pop3d"} {
		r.MainDone[d], r.Exited[d] = time.Second, time.Second
	}
	r.Running["lmtpd"] = true
	if p := r.problems(); len(p) != 1 || !strings.Contains(p[0], "pop3d, restarted") {
		t.Errorf("problems %q", p)
	}
	if s := r.String(); !strings.Contains(s, "lmtpd exited in 1.0s, restarted and listening") {
		t.Errorf("String %q", s)
	}
	// lmtpd's code stopped at the deadline, its process held in the
	// kernel by a thread waiting for the filer's writeback.
	r = newTermResult("mx1")
	r.MainDone["lmtpd"] = labShutdownTimeout
	r.MainDone["pop3d"], r.Exited["pop3d"], r.Running["pop3d"] = time.Second, time.Second, true
	if p := r.problems(); len(p) != 0 {
		t.Errorf("problems %q for a process the kernel held after its code stopped in time", p)
	}
	if s := r.String(); !strings.Contains(s, "lmtpd stopped in 30.0s, its process then held by the kernel") {
		t.Errorf("String %q", s)
	}
}

// TestListeningCommand runs the listening-socket reader under the host's
// sh: a listener this test opens is in its output, in /proc/net/tcp's
// hex form (the form daemonPorts uses).
func TestListeningCommand(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, err := exec.Command("sh", "-c", listeningCommand).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := fmt.Sprintf("0100007F:%04X\n", l.Addr().(*net.TCPAddr).Port)
	if !strings.Contains(string(out), want) {
		t.Errorf("listening sockets %q lack %q", out, want)
	}
	if daemonPorts["lmtpd"] != fmt.Sprintf(":%04X", 24) || daemonPorts["pop3d"] != fmt.Sprintf(":%04X", 110) {
		t.Errorf("daemonPorts %v", daemonPorts)
	}
}
