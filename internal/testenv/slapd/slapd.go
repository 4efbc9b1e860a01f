// Package slapd runs a private OpenLDAP server for integration tests: its
// own slapd.conf, MDB database, pid file and log in a temporary directory,
// listening on a free loopback port, loaded with LDIF by slapadd before it
// starts.
//
// It never touches the system's /etc/ldap configuration or a slapd already
// running: every program gets "-f CONF" (or "-F DIR"), and Kill ends only
// the process it started, by PID. As root, slapd runs as the openldap user
// (setpriv), as Debian's package does; otherwise as the test's own user.
// Start is plain Go (for benchmarks and the lab); StartT is its testing
// wrapper, where a missing program fails the test under CI=true and skips
// it elsewhere (testenv.Require).
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
	done <-chan struct{}
}

// Package is the Debian package that holds the programs.
const Package = "slapd"

// startTimeout bounds the wait for a started slapd to answer.
const startTimeout = 15 * time.Second

func (o *Options) defaults() {
	if o.Suffix == "" {
		o.Suffix = "dc=example,dc=org"
	}
	if o.RootDN == "" {
		o.RootDN = "cn=admin," + o.Suffix
	}
	if o.RootPW == "" {
		o.RootPW = "admin-secret"
	}
	if o.ACL == nil {
		o.ACL = []string{
			"access to attrs=userPassword by self write by anonymous auth by * none",
			"access to * by * read",
		}
	}
}

// programs are the slapd package's programs that Start runs.
type programs struct{ slapd, slapadd, slappasswd, slaptest string }

// programNames are the programs opts needs, in programs' order.
func programNames(opts Options) []string {
	names := []string{"slapd", "slapadd", "slappasswd"}
	if len(opts.ConfigLDIF) > 0 {
		names = append(names, "slaptest")
	}
	return names
}

func findPrograms(opts Options) (programs, error) {
	paths, err := testenv.Find(Package, programNames(opts)...)
	if err != nil {
		return programs{}, err
	}
	p := programs{slapd: paths[0], slapadd: paths[1], slappasswd: paths[2]}
	if len(paths) > 3 {
		p.slaptest = paths[3]
	}
	return p, nil
}

// Start builds a server in a new directory under /tmp, loads opts.LDIF and
// starts it, and waits until it answers (or ctx ends). A missing program
// is testenv.ErrNotInstalled (wrapped). Close kills it and removes the
// directory.
func Start(ctx context.Context, opts Options) (*Server, error) {
	progs, err := findPrograms(opts)
	if err != nil {
		return nil, err
	}
	opts.defaults()
	dir, err := os.MkdirTemp("/tmp", "slapd")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Suffix: opts.Suffix, RootDN: opts.RootDN, RootPW: opts.RootPW, logFile: filepath.Join(dir, "slapd.log")}
	if err := s.prepare(ctx, opts, progs); err != nil {
		s.Close()
		return nil, fmt.Errorf("slapd: %w", err)
	}
	if err := s.start(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// StartT starts a server for a test; t.Cleanup kills it and removes its
// directory (kept, and named, when the test failed). A missing program
// fails the test under CI=true and skips it elsewhere.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	testenv.Require(t, Package, programNames(opts)...)
	start := func(ctx context.Context) (*Server, error) { return Start(ctx, opts) }
	return testenv.StartPeerT(t, 2*time.Minute, start, func(s *Server) {
		if t.Failed() {
			s.Kill()
			t.Logf("slapd directory kept: %s", s.Dir)
			return
		}
		s.Close()
	})
}

// Close kills the server and removes its directory.
func (s *Server) Close() {
	s.Kill()
	os.RemoveAll(s.Dir)
}

// prepare writes slapd.conf (or slapd.d), loads the LDIF and picks the
// ports; the server is not running yet.
func (s *Server) prepare(ctx context.Context, opts Options, progs programs) error {
	// The openldap user must reach it: MkdirTemp makes it 0700.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return err
	}
	db := filepath.Join(s.Dir, "db")
	if err := os.Mkdir(db, 0o755); err != nil {
		return err
	}
	confPath := filepath.Join(s.Dir, "slapd.conf")
	conf, err := s.config(ctx, opts, progs, db)
	if err != nil {
		return err
	}
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	cfgArgs := []string{"-f", confPath}
	if len(opts.ConfigLDIF) > 0 {
		if cfgArgs, err = s.configDir(ctx, opts, progs, confPath); err != nil {
			return err
		}
	}
	for i, text := range opts.LDIF {
		p := filepath.Join(s.Dir, fmt.Sprintf("data%d.ldif", i))
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
		if err := run(ctx, progs.slapadd, append(append([]string{}, cfgArgs...), "-b", opts.Suffix, "-l", p)...); err != nil {
			return err
		}
	}
	listen, err := s.listen(opts)
	if err != nil {
		return err
	}
	s.args = append([]string{progs.slapd, "-h", listen}, append(cfgArgs, "-d", "0")...)
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("openldap"); err == nil {
			s.asUser = true
			return run(ctx, "chown", "-R", "openldap:openldap", s.Dir)
		}
	}
	return nil
}

// config returns slapd.conf's text.
func (s *Server) config(ctx context.Context, opts Options, progs programs, db string) (string, error) {
	schemaDir, moduleDir := packageDirs()
	var conf strings.Builder
	schemas := []string{"core", "cosine"}
	if !opts.NoStandardSchemas {
		schemas = append(schemas, "nis", "inetorgperson")
	}
	for _, sc := range schemas {
		fmt.Fprintf(&conf, "include %s\n", filepath.Join(schemaDir, sc+".schema"))
	}
	for _, sc := range opts.Schemas {
		p, err := copyIn(s.Dir, sc)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&conf, "include %s\n", p)
	}
	if opts.TLSCert != nil {
		for name, data := range map[string][]byte{"tls.crt": opts.TLSCert, "tls.key": opts.TLSKey} {
			if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
				return "", err
			}
		}
		fmt.Fprintf(&conf, "TLSCertificateFile %s\nTLSCertificateKeyFile %s\n", filepath.Join(s.Dir, "tls.crt"), filepath.Join(s.Dir, "tls.key"))
	}
	hash, err := hashPassword(ctx, progs.slappasswd, opts.RootPW)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&conf, "pidfile %s\nargsfile %s\n", filepath.Join(s.Dir, "slapd.pid"), filepath.Join(s.Dir, "slapd.args"))
	fmt.Fprintf(&conf, "modulepath %s\nmoduleload back_mdb\n", moduleDir)
	fmt.Fprintf(&conf, "database mdb\nmaxsize 67108864\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n", opts.Suffix, opts.RootDN, hash, db)
	conf.WriteString("index objectClass eq\nindex uid,mail eq\n")
	for _, a := range append(opts.ACL, opts.Extra...) {
		conf.WriteString(a + "\n")
	}
	return conf.String(), nil
}

// configDir converts slapd.conf into a slapd.d and loads opts.ConfigLDIF
// into it; it returns slapd's arguments for it.
func (s *Server) configDir(ctx context.Context, opts Options, progs programs, confPath string) ([]string, error) {
	cfgDir := filepath.Join(s.Dir, "slapd.d")
	if err := os.Mkdir(cfgDir, 0o755); err != nil {
		return nil, err
	}
	if err := run(ctx, progs.slaptest, "-n", "0", "-f", confPath, "-F", cfgDir); err != nil {
		return nil, err
	}
	for _, l := range opts.ConfigLDIF {
		p, err := copyIn(s.Dir, l)
		if err != nil {
			return nil, err
		}
		if err := run(ctx, progs.slapadd, "-n", "0", "-F", cfgDir, "-l", p); err != nil {
			return nil, err
		}
	}
	return []string{"-F", cfgDir}, nil
}

// listen picks the ports and returns slapd's -h argument.
func (s *Server) listen(opts Options) (string, error) {
	port, err := testenv.FreeLoopbackPort()
	if err != nil {
		return "", err
	}
	s.Port = port
	s.URI = "ldap://127.0.0.1:" + strconv.Itoa(s.Port)
	listen := s.URI + "/"
	if opts.TLSCert != nil {
		tlsPort, err := testenv.FreeLoopbackPort()
		if err != nil {
			return "", err
		}
		s.URITLS = "ldaps://127.0.0.1:" + strconv.Itoa(tlsPort)
		listen += " " + s.URITLS + "/"
	}
	return listen, nil
}

// Restart starts the server again (same port, same data) after Kill.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Relaunch(ctx); err != nil {
		t.Fatal(err)
	}
}

// Relaunch is Restart outside a test.
func (s *Server) Relaunch(ctx context.Context) error {
	s.Kill()
	return s.start(ctx)
}

// start runs slapd and waits until it answers.
func (s *Server) start(ctx context.Context) error {
	args := s.args
	if s.asUser {
		args = append([]string{"setpriv", "--reuid", "openldap", "--regid", "openldap", "--clear-groups", "--pdeathsig", "KILL", "--"}, args...)
	}
	// If the test binary dies without its cleanups (a timeout panic), the
	// server dies with it rather than linger on its port. setpriv sets
	// this itself, after changing user, which would clear ours.
	cmd, exit, err := testenv.StartLogged(args, s.logFile, nil)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, exit.Done()
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := testenv.WaitReady(ctx, exit, s.ping); err != nil {
		s.Kill()
		return fmt.Errorf("slapd did not answer on %s: %w\n%s", s.URI, err, s.Log())
	}
	return nil
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
	prog := testenv.Require(t, Package, "slappasswd")[0]
	hash, err := hashPassword(context.Background(), prog, pw)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

func hashPassword(ctx context.Context, slappasswd, pw string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, slappasswd, "-s", pw).Output()
	if err != nil {
		return "", fmt.Errorf("slappasswd: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// run runs a set-up program (slapadd, slaptest, chown) and returns its
// output with the error.
func run(ctx context.Context, prog string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", prog, strings.Join(args, " "), err, out)
	}
	return nil
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
func copyIn(dir, p string) (string, error) {
	data, err := os.ReadFile(repoPath(p))
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, filepath.Base(p))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return "", err
	}
	return dst, nil
}
