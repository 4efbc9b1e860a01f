// Package slapd runs a private OpenLDAP server for integration tests: its
// own slapd.conf, MDB database, pid file and log in a temporary directory,
// listening on a free loopback port, loaded with LDIF by slapadd before it
// starts.
//
// It never touches the system's /etc/ldap configuration or a slapd already
// running: every program gets "-f CONF" (or "-F DIR"), and Kill ends only
// the process it started, by PID. As root, slapd runs as the openldap user
// (setpriv), as Debian's package does; otherwise as the test's own user.
// A missing program fails the test under CI=true and skips it elsewhere
// (testenv.Require).
package slapd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// Options describes the directory.
type Options struct {
	// Suffix is the database suffix. Default "dc=example,dc=org".
	Suffix string
	// RootDN and RootPW are the database's rootdn and its password
	// (stored hashed). Default "cn=admin," + Suffix and "admin-secret".
	RootDN, RootPW string
	// Schemas are extra schema files included after core, cosine, nis and
	// inetorgperson (absolute paths, or relative to the repository root).
	Schemas []string
	// NoStandardSchemas leaves out nis and inetorgperson (core and cosine
	// stay).
	NoStandardSchemas bool
	// ConfigLDIF are cn=config LDIF files (schema entries) loaded with
	// "slapadd -n 0" into a slapd.d converted from the generated
	// slapd.conf; slapd then runs with -F. Paths as for Schemas.
	ConfigLDIF []string
	// LDIF is data loaded with slapadd, in order, before slapd starts.
	LDIF []string
	// ACL lists "access to ..." lines; default: userPassword readable by
	// nobody but usable for binds, everything else readable by all.
	ACL []string
	// Extra lines are added to the database section after the ACL, such
	// as "limits * size=1" or "restrict search".
	Extra []string
	// TLSCert and TLSKey (PEM) make the server offer StartTLS on URI and
	// listen with TLS on URITLS too.
	TLSCert, TLSKey []byte
}

// Server is a running private slapd.
type Server struct {
	// URI is ldap://127.0.0.1:PORT.
	URI  string
	Port int
	// URITLS is ldaps://127.0.0.1:PORT2 when Options.TLSCert is set.
	URITLS string
	// Dir holds slapd.conf, the database and the log; removed at cleanup.
	Dir    string
	Suffix string
	RootDN string
	RootPW string

	args    []string // slapd command line (program first)
	asUser  bool     // run through setpriv as openldap
	logFile string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start builds and starts a server; t.Cleanup kills it and removes its
// directory.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	progs := testenv.Require(t, "slapd", "slapd", "slapadd", "slappasswd")
	slapdPath, slapadd := progs[0], progs[1]
	schemaDir, moduleDir := packageDirs()

	if opts.Suffix == "" {
		opts.Suffix = "dc=example,dc=org"
	}
	if opts.RootDN == "" {
		opts.RootDN = "cn=admin," + opts.Suffix
	}
	if opts.RootPW == "" {
		opts.RootPW = "admin-secret"
	}
	if opts.ACL == nil {
		opts.ACL = []string{
			"access to attrs=userPassword by self write by anonymous auth by * none",
			"access to * by * read",
		}
	}
	dir, err := os.MkdirTemp("/tmp", "slapd")
	if err != nil {
		t.Fatal(err)
	}
	// The openldap user must reach it: MkdirTemp makes it 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: dir, Suffix: opts.Suffix, RootDN: opts.RootDN, RootPW: opts.RootPW, logFile: filepath.Join(dir, "slapd.log")}
	t.Cleanup(func() {
		s.Kill()
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("slapd directory kept: %s", dir)
		}
	})
	db := filepath.Join(dir, "db")
	if err := os.Mkdir(db, 0o755); err != nil {
		t.Fatal(err)
	}

	var conf strings.Builder
	schemas := []string{"core", "cosine"}
	if !opts.NoStandardSchemas {
		schemas = append(schemas, "nis", "inetorgperson")
	}
	for _, sc := range schemas {
		fmt.Fprintf(&conf, "include %s\n", filepath.Join(schemaDir, sc+".schema"))
	}
	for _, sc := range opts.Schemas {
		fmt.Fprintf(&conf, "include %s\n", copyIn(t, dir, sc))
	}
	if opts.TLSCert != nil {
		for name, data := range map[string][]byte{"tls.crt": opts.TLSCert, "tls.key": opts.TLSKey} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Fprintf(&conf, "TLSCertificateFile %s\nTLSCertificateKeyFile %s\n", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	}
	hash := HashPassword(t, opts.RootPW)
	fmt.Fprintf(&conf, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	fmt.Fprintf(&conf, "modulepath %s\nmoduleload back_mdb\n", moduleDir)
	fmt.Fprintf(&conf, "database mdb\nmaxsize 67108864\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n", opts.Suffix, opts.RootDN, hash, db)
	conf.WriteString("index objectClass eq\nindex uid,mail eq\n")
	for _, a := range append(opts.ACL, opts.Extra...) {
		conf.WriteString(a + "\n")
	}
	confPath := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgArgs := []string{"-f", confPath}
	if len(opts.ConfigLDIF) > 0 {
		slaptest := testenv.Require(t, "slapd", "slaptest")[0]
		cfgDir := filepath.Join(dir, "slapd.d")
		if err := os.Mkdir(cfgDir, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, slaptest, "-n", "0", "-f", confPath, "-F", cfgDir)
		for _, l := range opts.ConfigLDIF {
			run(t, slapadd, "-n", "0", "-F", cfgDir, "-l", copyIn(t, dir, l))
		}
		cfgArgs = []string{"-F", cfgDir}
	}
	for i, text := range opts.LDIF {
		p := filepath.Join(dir, fmt.Sprintf("data%d.ldif", i))
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, slapadd, append(append([]string{}, cfgArgs...), "-b", opts.Suffix, "-l", p)...)
	}

	s.Port = testenv.FreePort(t)
	s.URI = "ldap://127.0.0.1:" + strconv.Itoa(s.Port)
	listen := s.URI + "/"
	if opts.TLSCert != nil {
		s.URITLS = "ldaps://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		listen += " " + s.URITLS + "/"
	}
	s.args = append([]string{slapdPath, "-h", listen}, append(cfgArgs, "-d", "0")...)
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("openldap"); err == nil {
			s.asUser = true
			run(t, "chown", "-R", "openldap:openldap", dir)
		}
	}
	s.start(t)
	return s
}

// Restart starts the server again (same port, same data) after Kill.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	s.start(t)
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	args := s.args
	if s.asUser {
		args = append([]string{"setpriv", "--reuid", "openldap", "--regid", "openldap", "--clear-groups", "--pdeathsig", "KILL", "--"}, args...)
	}
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies without its cleanups (a timeout panic), the
	// server dies with it rather than linger on its port. setpriv sets
	// this itself, after changing user, which would clear ours.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting slapd: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("slapd exited at start: %s\n%s", cmd.ProcessState, s.Log())
		default:
		}
		if err := s.ping(); err == nil {
			return
		} else if time.Now().After(deadline) {
			s.Kill()
			t.Fatalf("slapd did not answer on %s: %v\n%s", s.URI, err, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping reads the root DSE anonymously.
func (s *Server) ping() error {
	c, err := ldap.DialURL(s.URI, ldap.DialWithDialer(&netDialer))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(time.Second)
	_, err = c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 1, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	return err
}

// PID is the server's process id, 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	select {
	case <-s.done:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

// Kill ends the server with SIGKILL (an outage, not a clean stop) and waits
// for it; a stopped server is continued first. It is safe to call twice.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-done
}

// Stop freezes the server with SIGSTOP: connections are accepted by the
// kernel but nothing answers. It returns once every thread is stopped (a
// signal takes effect when the process next runs, so a thread busy on
// another CPU could otherwise still answer). Cont resumes it.
func (s *Server) Stop() {
	s.signal(syscall.SIGSTOP)
	pid := s.PID()
	if pid == 0 {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !allStopped(pid) {
		time.Sleep(time.Millisecond)
	}
}

// allStopped reports whether every thread of pid is in state T (stopped).
func allStopped(pid int) bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false
		}
		// "pid (comm) S ...": the state follows the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Cont resumes a server frozen by Stop.
func (s *Server) Cont() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Signal(sig)
	}
}

// Log returns what slapd wrote so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// Modify runs fn on a connection bound as the root DN, for tests that
// change the directory while it runs.
func (s *Server) Modify(t testing.TB, fn func(*ldap.Conn) error) {
	t.Helper()
	c, err := ldap.DialURL(s.URI, ldap.DialWithDialer(&netDialer))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetTimeout(5 * time.Second)
	if err := c.Bind(s.RootDN, s.RootPW); err != nil {
		t.Fatal(err)
	}
	if err := fn(c); err != nil {
		t.Fatal(err)
	}
}

// HashPassword returns slappasswd's {SSHA} hash of pw.
func HashPassword(t testing.TB, pw string) string {
	t.Helper()
	prog := testenv.Require(t, "slapd", "slappasswd")[0]
	out, err := exec.Command(prog, "-s", pw).Output()
	if err != nil {
		t.Fatalf("slappasswd: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func run(t testing.TB, prog string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
}

// packageDirs finds the schema and module directories of Debian's slapd
// package as the recipe does (dpkg -L), falling back to Debian's paths.
func packageDirs() (schema, modules string) {
	schema, modules = "/etc/ldap/schema", "/usr/lib/ldap"
	out, err := exec.Command("dpkg", "-L", "slapd").Output()
	if err != nil {
		return
	}
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		p := string(line)
		switch {
		case strings.HasSuffix(p, "/core.schema"):
			schema = filepath.Dir(p)
		case strings.HasSuffix(p, "/back_mdb.so"):
			modules = filepath.Dir(p)
		}
	}
	return
}

func repoPath(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(testenv.RepoRoot(), p)
}

var netDialer = net.Dialer{Timeout: 2 * time.Second}

// copyIn copies a file into dir (the openldap user may not be able to read
// the repository) and returns the copy's path.
func copyIn(t testing.TB, dir, p string) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(p))
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(p))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}
