package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
)

// TestUserCommandsLDAP runs "nfsdrop user lookup" and "nfsdrop user auth"
// with userdb.driver = "ldap" against a real slapd loaded with contrib/ldap.
func TestUserCommandsLDAP(t *testing.T) {
	users, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "contrib", "ldap", "users.ldif"))
	if err != nil {
		t.Fatal(err)
	}
	srv := slapd.StartT(t, slapd.Options{Schemas: []string{"contrib/ldap/nfsdrop.schema"}, LDIF: []string{string(users)}})
	bin := testenv.Binary(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "mail")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "ldap.password")
	if err := os.WriteFile(pw, []byte("nfsdrop-service-example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "nfsdrop.toml")
	conf := `[store]
mail_root = "` + root + `"
mount_marker = ""
[userdb]
driver = "ldap"
default_domain = "example.org"
[ldap]
uris = ["ldap://127.0.0.1:1", "` + srv.URI + `"]
bind_dn = "cn=nfsdrop,ou=services,dc=example,dc=org"
bind_password_file = "` + pw + `"
base_dn = "ou=people,dc=example,dc=org"
timeout = "2s"
`
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		t.Logf("nfsdrop %s: %v\n%s", strings.Join(args, " "), err, out)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}

	out, code := run("", "user", "lookup", "-c", cfg, "a.smith+news@example.org")
	if code != 0 || !testenv.Contains(out, "name:     alice@example.org", "address:  a.smith@example.org",
		"mailbox:  "+filepath.Join(root, "example.org/alice/Maildir"), "uid:gid:  5001:5000", "1073741824 bytes, 10000 messages") {
		t.Errorf("user lookup alice: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "nfsdrop-service-example") {
		t.Errorf("the bind password is in the output:\n%s", out)
	}
	out, code = run("", "user", "lookup", "-c", cfg, "nobody@example.org")
	if code != exNoUser || !strings.Contains(out, "not-found") {
		t.Errorf("user lookup nobody: exit %d\n%s", code, out)
	}
	out, code = run("", "user", "lookup", "-c", cfg, "carol@example.org")
	if code != exNoUser || !strings.Contains(out, "disabled") {
		t.Errorf("user lookup carol: exit %d\n%s", code, out)
	}

	out, code = run("alice-example-pw\n", "user", "auth", "-c", cfg, "alice")
	if code != 0 || !strings.Contains(out, "ok: alice@example.org") {
		t.Errorf("user auth alice: exit %d\n%s", code, out)
	}
	out, code = run("wrong\n", "user", "auth", "-c", cfg, "alice")
	if code != exNoUser || !strings.Contains(out, "authentication failed") {
		t.Errorf("user auth alice, wrong password: exit %d\n%s", code, out)
	}

	srv.Kill()
	out, code = run("", "user", "lookup", "-c", cfg, "alice@example.org")
	if code != exTempFail || !strings.Contains(out, "user directory unavailable") {
		t.Errorf("user lookup with the directory down: exit %d\n%s", code, out)
	}
}
