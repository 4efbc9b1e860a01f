package packaging_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

const unitDir = "usr/lib/systemd/system"

// unit is a parsed unit file: each key's values in order (a key given
// again adds a value; an empty assignment resets, as systemd reads them).
type unit map[string][]string

func parseUnit(t testing.TB, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	var cont string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasSuffix(line, "\\") {
			cont += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cont = cont+line, ""
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			key := section + "." + strings.TrimSpace(k)
			if v = strings.TrimSpace(v); v == "" {
				u[key] = nil
			} else {
				u[key] = append(u[key], v)
			}
		}
	}
	return u
}

func (u unit) get(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// packagedUnits lists the unit files the .deb installs.
func packagedUnits(t testing.TB, b *built) []string {
	t.Helper()
	var names []string
	for _, pat := range []string{"*.service", "*.socket", "*.timer"} {
		m, _ := filepath.Glob(filepath.Join(b.root, unitDir, pat))
		for _, p := range m {
			names = append(names, filepath.Base(p))
		}
	}
	if len(names) != 7 {
		t.Fatalf("the .deb has %d units, want 7: %q", len(names), names)
	}
	return names
}

// verifyRoot is a root for systemd-analyze --root: the unpacked .deb
// (so /usr/sbin/nfsdrop, where ExecStart points, is the packaged binary)
// and the system's own units (sysinit.target, ...) and kill(1) for
// ExecReload=.
func verifyRoot(t testing.TB, b *built) string {
	t.Helper()
	root := t.TempDir()
	run(t, "cp", "-a", b.root+"/.", root)
	sys := "/usr/lib/systemd/system"
	if _, err := os.Stat(sys); err != nil {
		sys = "/lib/systemd/system"
	}
	run(t, "cp", "-a", "--no-clobber", sys+"/.", filepath.Join(root, unitDir))
	kill, err := exec.LookPath("kill")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", kill, filepath.Join(root, "usr/bin/kill"))
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	return root
}

func TestSystemdVerify(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "systemd", "systemd-analyze")
	b := packages(t)
	root := verifyRoot(t, b)
	for _, name := range packagedUnits(t, b) {
		cmd := exec.Command("systemd-analyze", "verify", "--root="+root, "--man=no", name)
		cmd.Dir = filepath.Join(root, unitDir)
		out, err := cmd.CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

// TestSystemdSecurity: every service rates at most 2.0 ("OK") in
// systemd-analyze security.
func TestSystemdSecurity(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "systemd", "systemd-analyze")
	b := packages(t)
	re := regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+) (\S+)`)
	for _, name := range packagedUnits(t, b) {
		if !strings.HasSuffix(name, ".service") {
			continue
		}
		cmd := exec.Command("systemd-analyze", "security", "--offline=yes", "--no-pager", name)
		cmd.Dir = filepath.Join(b.root, unitDir)
		out, err := cmd.CombinedOutput()
		m := re.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %v\n%s", name, err, out)
			continue
		}
		score, _ := strconv.ParseFloat(string(m[2]), 64)
		t.Logf("%s: %s %s", name, m[2], m[3])
		if score > 2.0 {
			t.Errorf("%s exposure %.1f > 2.0:\n%s", name, score, out)
		}
	}
}

// TestSocketActivation starts each socket-activated service the way
// systemd would: systemd-socket-activate listens on the packaged socket
// units' ListenStream= addresses (moved to a temporary directory and free
// loopback ports) with their FileDescriptorName= names, and runs the
// service's ExecStart=. Then LMTP delivers, POP3 logs in, POP3S does TLS.
func TestSocketActivation(t *testing.T) {
	t.Parallel()
	sa := testenv.Require(t, "systemd", "systemd-socket-activate")[0]
	b := packages(t)
	// Sockets by the service they start.
	bySvc := map[string][]unit{}
	var socketNames []string
	for _, name := range packagedUnits(t, b) {
		if !strings.HasSuffix(name, ".socket") {
			continue
		}
		u := parseUnit(t, filepath.Join(b.root, unitDir, name))
		svc := u.get("Socket.Service")
		if svc == "" {
			svc = strings.TrimSuffix(name, ".socket") + ".service"
		}
		bySvc[svc] = append(bySvc[svc], u)
		socketNames = append(socketNames, name)
	}
	slices.Sort(socketNames)
	if want := []string{"nfsdrop-lmtp.socket", "nfsdrop-pop3.socket", "nfsdrop-pop3s.socket"}; !slices.Equal(socketNames, want) {
		t.Fatalf("socket units %q, want %q", socketNames, want)
	}
	for svc, sockets := range bySvc {
		t.Run(svc, func(t *testing.T) {
			w := newWorld(t, conf{})
			cert, key := makeCert(t, w.dir)
			w.configure(conf{tlsCert: cert, tlsKey: key, allowPlaintext: true})
			svcUnit := parseUnit(t, filepath.Join(b.root, unitDir, svc))
			if got := svcUnit.get("Service.Type"); got != "notify" {
				t.Errorf("%s: Type=%s, want notify", svc, got)
			}
			if svcUnit.get("Service.WatchdogSec") == "" {
				t.Errorf("%s: no WatchdogSec=", svc)
			}
			args := []string{}
			var names []string
			addrs := map[string][]string{} // fd name -> addresses to connect to
			for _, s := range sockets {
				name := s.get("Socket.FileDescriptorName")
				if name == "" {
					t.Fatalf("a socket of %s has no FileDescriptorName=", svc)
				}
				for _, listen := range s["Socket.ListenStream"] {
					var addr, network string
					if strings.HasPrefix(listen, "/") {
						addr, network = filepath.Join(w.dir, filepath.Base(listen)), "unix"
					} else if _, err := strconv.Atoi(listen); err == nil {
						addr, network = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "tcp"
					} else {
						t.Fatalf("unexpected ListenStream=%s", listen)
					}
					args = append(args, "-l", addr)
					names = append(names, name)
					addrs[name] = append(addrs[name], network+" "+addr)
				}
			}
			args = append(args, "--fdname="+strings.Join(names, ":"), "--")
			exec := strings.Fields(svcUnit.get("Service.ExecStart"))
			for _, a := range exec {
				switch a {
				case "/usr/sbin/nfsdrop":
					a = b.bin
				case "/etc/nfsdrop/nfsdrop.toml":
					a = w.cfg
				}
				args = append(args, a)
			}
			p := start(t, filepath.Join(w.dir, "daemon.log"), nil, sa, args...)
			for name, list := range addrs {
				for _, na := range list {
					network, addr, _ := strings.Cut(na, " ")
					c := dialRetry(t, network, addr, 10*time.Second)
					switch name {
					case "lmtp":
						lmtpDeliver(t, c, "socket activation")
						w.waitMessages(1, 10*time.Second)
					case "pop3":
						pop3Login(t, c)
					case "pop3s":
						tc := tlsClient(c)
						if err := tc.(*tls.Conn).Handshake(); err != nil {
							t.Fatalf("pop3s TLS handshake: %v", err)
						}
						pop3Login(t, tc)
					default:
						t.Errorf("descriptor name %q: no nfsdrop server looks for it", name)
					}
				}
			}
			// The daemon took the sockets from systemd: it logs the
			// descriptors it was handed, under their names.
			line := p.waitLog(10*time.Second, `msg=listening`)
			for name := range addrs {
				if !strings.Contains(line, name+"=") {
					t.Errorf("listening line lacks %s: %s", name, line)
				}
			}
		})
	}
}

// TestCleanService runs the sweeper's ExecStart= on a mail root and
// checks the timer.
func TestCleanService(t *testing.T) {
	t.Parallel()
	b := packages(t)
	w := newWorld(t, conf{})
	svc := parseUnit(t, filepath.Join(b.root, unitDir, "nfsdrop-clean.service"))
	timer := parseUnit(t, filepath.Join(b.root, unitDir, "nfsdrop-clean.timer"))
	if got := timer.get("Timer.OnCalendar"); got != "daily" {
		t.Errorf("nfsdrop-clean.timer: OnCalendar=%s, want daily", got)
	}
	tmp := filepath.Join(w.maildir(), "tmp")
	for _, d := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(w.maildir(), d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A file in tmp/ whose delivery may still be running: the sweeper
	// must leave it. (Removing old ones is the store's own test: the age
	// is the change time too, which a test cannot set back.)
	fresh := filepath.Join(tmp, "2.fresh.host")
	writeFile(t, fresh, "x", 0o600)
	var args []string
	for _, a := range strings.Fields(svc.get("Service.ExecStart")) {
		switch a {
		case "/usr/sbin/nfsdrop":
			a = b.bin
		case "/etc/nfsdrop/nfsdrop.toml":
			a = w.cfg
		case "/var/mail/nfsdrop":
			a = w.root
		}
		args = append(args, a)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(string(out), "in 1 maildirs") {
		t.Errorf("the sweeper did not visit the one Maildir:\n%s", out)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("the fresh tmp file was removed:\n%s", out)
	}
}
