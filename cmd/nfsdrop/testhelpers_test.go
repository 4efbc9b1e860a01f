package main

// Helpers for the end-to-end tests in deliver_e2e_test.go: a work directory
// with a configuration, a passwd-file and a mail root, and a way to run the
// built binary the way Postfix's pipe(8) or local(8) mailbox_command would.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

const (
	e2eDomain = "example.org"
	e2eHost   = "e2e.test" // config "hostname": host part of names, Received: by
	e2eMarker = ".nfsdrop-mounted"
	// e2eTimeout bounds one run of the binary, so a hang fails the test
	// instead of stalling the package.
	e2eTimeout = 2 * time.Minute
)

// e2eOpts describes one test's configuration.
type e2eOpts struct {
	// mailRoot is the mail root; "" means <dir>/mail, created.
	mailRoot string
	// noMarker leaves the mount marker out (it is configured all the same).
	noMarker bool
	// noMailRoot does not create the mail root.
	noMailRoot bool
	// maxSize is lmtp.max_message_size; "" leaves the default (50M).
	maxSize string
	// quotaAction is store.quota_action; "" leaves the default.
	quotaAction string
	// users are the passwd-file lines; nil means alice, bob and carol in
	// e2eDomain, with home directories derived from the mail root.
	users []string
}

// e2e is one test's world: a work directory holding the configuration, the
// passwd-file and (normally) the mail root.
type e2e struct {
	t     testing.TB
	bin   string
	dir   string
	root  string
	cfg   string
	users string
}

var defaultUsers = []string{
	"alice@example.org:{PLAIN}pw::::::",
	"bob@example.org:{PLAIN}pw::::::",
	"carol@example.org:{PLAIN}pw::::::",
}

// newE2E makes the work directory and writes the configuration.
func newE2E(t testing.TB, o e2eOpts) *e2e {
	t.Helper()
	e := &e2e{t: t, bin: testenv.Binary(t), dir: t.TempDir()}
	e.root = o.mailRoot
	if e.root == "" {
		e.root = filepath.Join(e.dir, "mail")
	}
	if !o.noMailRoot {
		if err := os.MkdirAll(e.root, 0o755); err != nil {
			t.Fatal(err)
		}
		if !o.noMarker {
			writeFile(t, filepath.Join(e.root, e2eMarker), nil)
		}
	}
	e.users = filepath.Join(e.dir, "users")
	users := o.users
	if users == nil {
		users = defaultUsers
	}
	e.writeUsers(users...)

	var b strings.Builder
	fmt.Fprintf(&b, "hostname = %q\n\n", e2eHost)
	fmt.Fprintf(&b, "[log]\nlevel = \"debug\"\n\n")
	fmt.Fprintf(&b, "[store]\nmail_root = %q\nmount_marker = %q\n", e.root, e2eMarker)
	if o.quotaAction != "" {
		fmt.Fprintf(&b, "quota_action = %q\n", o.quotaAction)
	}
	fmt.Fprintf(&b, "\n[userdb]\ndriver = \"passwd-file\"\npasswd_file = %q\n", e.users)
	fmt.Fprintf(&b, "default_domain = %q\nrecipient_delimiter = \"+\"\n", e2eDomain)
	// lmtp.listen is not used by deliver but must be valid.
	fmt.Fprintf(&b, "\n[lmtp]\nlisten = [\"unix:/run/nfsdrop-e2e/lmtp.sock\"]\n")
	if o.maxSize != "" {
		fmt.Fprintf(&b, "max_message_size = %q\n", o.maxSize)
	}
	e.cfg = filepath.Join(e.dir, "nfsdrop.toml")
	writeFile(t, e.cfg, []byte(b.String()))
	return e
}

// writeUsers replaces the passwd-file.
func (e *e2e) writeUsers(lines ...string) {
	e.t.Helper()
	writeFile(e.t, e.users, []byte(strings.Join(lines, "\n")+"\n"))
}

// maildir is the Maildir of local@e2eDomain for an entry with an empty home.
func (e *e2e) maildir(local string) string {
	return filepath.Join(e.root, e2eDomain, local, "Maildir")
}

// result is how one run of the binary ended.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// command prepares the binary with args. The environment is the test's
// without the variables deliver reads (RECIPIENT, SENDER, NFSDROP_CONFIG),
// plus env; prefix is put before the binary (setpriv and its options).
func (e *e2e) command(ctx context.Context, env, prefix []string, args ...string) *exec.Cmd {
	argv := append(append(slices.Clone(prefix), e.bin), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = e.dir
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "RECIPIENT", "SENDER", "NFSDROP_CONFIG":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// run runs the binary to its end with stdin as standard input.
func (e *e2e) run(stdin []byte, env []string, args ...string) result {
	e.t.Helper()
	return e.runAs(nil, stdin, env, args...)
}

func (e *e2e) runAs(prefix []string, stdin []byte, env []string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	cmd := e.command(ctx, env, prefix, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		e.t.Fatalf("running %v: %v\n%s", cmd.Args, err, r)
	}
	return r
}

// deliver runs `nfsdrop deliver -c CONFIG -f from -a rcpt...` with msg on
// standard input.
func (e *e2e) deliver(msg []byte, from string, rcpts ...string) result {
	e.t.Helper()
	return e.run(msg, nil, deliverArgs(e.cfg, from, rcpts...)...)
}

func deliverArgs(cfg, from string, rcpts ...string) []string {
	args := []string{"deliver", "-c", cfg, "-f", from}
	for _, r := range rcpts {
		args = append(args, "-a", r)
	}
	return args
}

// wantCode fails the test when r did not exit with code.
func wantCode(t testing.TB, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\n%s", r.code, code, r)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// names lists a directory's entries, sorted; a missing directory is empty.
func names(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// wantEmpty fails unless each directory is missing or empty.
func wantEmpty(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if n := names(t, d); len(n) > 0 {
			t.Errorf("%s holds %q, want nothing", d, n)
		}
	}
}

// onlyMessage returns the path and content of the single file in
// maildir/new/, failing if there is not exactly one.
func onlyMessage(t testing.TB, maildir string) (string, []byte) {
	t.Helper()
	n := names(t, filepath.Join(maildir, "new"))
	if len(n) != 1 {
		t.Fatalf("%s/new holds %d files %q, want 1", maildir, len(n), n)
	}
	p := filepath.Join(maildir, "new", n[0])
	return p, readFile(t, p)
}

// maildirName is a delivered file's name: the store's unique name
// (uniqueBase in store/name.go) with the configured host part, then the
// size fields.
var maildirName = regexp.MustCompile(`^([0-9]+)\.M([0-9]{6})P([0-9]+)Q([0-9]+)R([0-9a-f]{8})\.` +
	regexp.QuoteMeta(e2eHost) + `,S=([0-9]+),W=([0-9]+)$`)

// nameSizes parses ,S= and ,W= from a file name in new/.
func nameSizes(name string) (s, w int64, err error) {
	m := maildirName.FindStringSubmatch(name)
	if m == nil {
		return 0, 0, fmt.Errorf("file name %q is not <sec>.M<usec>P<pid>Q<n>R<rand>.%s,S=<size>,W=<size>", name, e2eHost)
	}
	s, _ = strconv.ParseInt(m[6], 10, 64)
	w, _ = strconv.ParseInt(m[7], 10, 64)
	return s, w, nil
}

// crlfSize is the RFC 1939 size: len(data) with every LF that has no CR
// before it counted twice, plus the CRLF a POP3 server adds after a last
// line that has no line end.
func crlfSize(data []byte) int64 {
	n := int64(len(data) + bytes.Count(data, []byte("\n")) - bytes.Count(data, []byte("\r\n")))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		n += 2
	}
	return n
}

// checkName verifies that name's ,S= is len(data) and ,W= is its CRLF size.
func checkName(name string, data []byte) error {
	s, w, err := nameSizes(name)
	if err != nil {
		return err
	}
	if s != int64(len(data)) {
		return fmt.Errorf("%s: S=%d but the file holds %d bytes", name, s, len(data))
	}
	if want := crlfSize(data); w != want {
		return fmt.Errorf("%s: W=%d, want %d (RFC 1939 size: bare LF counted as CRLF, a missing final line end as CRLF)", name, w, want)
	}
	return nil
}

// splitStored checks that data is trace headers followed by exactly msg,
// and returns the trace headers.
func splitStored(data, msg []byte) ([]byte, error) {
	if len(data) < len(msg) || !bytes.Equal(data[len(data)-len(msg):], msg) {
		return nil, fmt.Errorf("the stored file (%d bytes) does not end with the original message (%d bytes)", len(data), len(msg))
	}
	return data[:len(data)-len(msg)], nil
}

// traceFields splits trace headers into fields, each with its continuation
// lines (CRLF removed). Every line must end in CRLF.
func traceFields(trace []byte) ([]string, error) {
	var fields []string
	for len(trace) > 0 {
		line, rest, ok := bytes.Cut(trace, []byte("\r\n"))
		if !ok {
			return nil, fmt.Errorf("trace header line %q does not end in CRLF", line)
		}
		trace = rest
		switch {
		case len(line) == 0:
			return nil, errors.New("empty line in the trace headers")
		case line[0] == ' ' || line[0] == '\t':
			if len(fields) == 0 {
				return nil, fmt.Errorf("continuation line %q first", line)
			}
			fields[len(fields)-1] += string(line)
		default:
			fields = append(fields, string(line))
		}
	}
	return fields, nil
}

// checkTrace verifies the headers deliver adds: Return-Path, Delivered-To
// (only when rcpt is not "", that is for a single recipient) and Received.
func checkTrace(trace []byte, sender, rcpt string) error {
	f, err := traceFields(trace)
	if err != nil {
		return err
	}
	want := []string{"Return-Path: <" + sender + ">"}
	if rcpt != "" {
		want = append(want, "Delivered-To: "+rcpt)
	}
	if len(f) != len(want)+1 {
		return fmt.Errorf("trace headers %q, want %q then Received:", f, want)
	}
	for i := range want {
		if f[i] != want[i] {
			return fmt.Errorf("trace header %d is %q, want %q (all: %q)", i+1, f[i], want[i], f)
		}
	}
	rcvd := f[len(f)-1]
	if !strings.HasPrefix(rcvd, "Received: by "+e2eHost+" (nfsdrop) with local") {
		return fmt.Errorf("last trace header %q, want Received: by %s (nfsdrop) with local", rcvd, e2eHost)
	}
	if hasFor := strings.Contains(rcvd, "for <"+rcpt+">"); rcpt != "" && !hasFor {
		return fmt.Errorf("Received: %q has no \"for <%s>\"", rcvd, rcpt)
	} else if rcpt == "" && strings.Contains(rcvd, " for <") {
		return fmt.Errorf("Received: %q names a recipient in a multi-recipient delivery", rcvd)
	}
	_, date, ok := strings.Cut(rcvd, "; ")
	if !ok {
		return fmt.Errorf("Received: %q has no date", rcvd)
	}
	when, err := time.Parse(time.RFC1123Z, date)
	if err != nil {
		return fmt.Errorf("Received: date %q: %v", date, err)
	}
	if d := time.Since(when); d < -time.Minute || d > time.Hour {
		return fmt.Errorf("Received: date %s is not now", when)
	}
	return nil
}

// checkDelivered verifies a stored file against the original message: its
// name's sizes, the trace headers, and the original bytes as exact suffix.
func checkDelivered(name string, data, msg []byte, sender, rcpt string) error {
	if err := checkName(name, data); err != nil {
		return err
	}
	trace, err := splitStored(data, msg)
	if err != nil {
		return err
	}
	return checkTrace(trace, sender, rcpt)
}

// treeSnapshot lists every path under dir with its type, size and mode, to
// prove a refused delivery wrote nothing.
func treeSnapshot(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		size := info.Size()
		if info.IsDir() {
			size = 0
		}
		out = append(out, fmt.Sprintf("%s %v %d", p, info.Mode(), size))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// makeTraversable lets other users reach dir: every directory from dir up
// to (not including) the system temp directory gets o+x (t.TempDir makes
// its parent 0700).
func makeTraversable(t testing.TB, dir string) {
	t.Helper()
	top := filepath.Clean(os.TempDir())
	for d := filepath.Clean(dir); d != top && d != "/" && d != "."; d = filepath.Dir(d) {
		info, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, info.Mode().Perm()|0o055); err != nil {
			t.Fatal(err)
		}
	}
}

// statT returns the stat_t of path.
func statT(t testing.TB, path string) *syscall.Stat_t {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t)
}

// testMessage is a small RFC 5322 message with CRLF line ends.
func testMessage(subject, body string) []byte {
	return []byte("From: Sender <sender@example.net>\r\nTo: alice@example.org\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@example.net>\r\n\r\n" + body)
}
