package packaging_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// packagedFiles are the paths both packages must install.
var packagedFiles = []string{
	"/usr/sbin/nfsdrop",
	"/etc/nfsdrop/nfsdrop.toml",
	"/etc/nfsdrop/users",
	"/usr/lib/systemd/system/nfsdrop-lmtp.socket",
	"/usr/lib/systemd/system/nfsdrop-lmtp.service",
	"/usr/lib/systemd/system/nfsdrop-pop3.socket",
	"/usr/lib/systemd/system/nfsdrop-pop3s.socket",
	"/usr/lib/systemd/system/nfsdrop-pop3.service",
	"/usr/lib/systemd/system/nfsdrop-clean.service",
	"/usr/lib/systemd/system/nfsdrop-clean.timer",
	"/usr/lib/sysusers.d/nfsdrop.conf",
	"/usr/share/man/man8/nfsdrop.8.gz",
	"/usr/share/man/man5/nfsdrop.toml.5.gz",
	"/usr/share/doc/nfsdrop/copyright",
	"/usr/share/doc/nfsdrop/examples/nfsdrop.toml",
	"/usr/share/doc/nfsdrop/examples/postfix/master.cf",
	"/usr/share/doc/nfsdrop/examples/haproxy/haproxy.cfg",
}

var configFiles = []string{"/etc/nfsdrop/nfsdrop.toml", "/etc/nfsdrop/users"}

func TestDebContents(t *testing.T) {
	b := packages(t)
	list := run(t, "dpkg-deb", "-c", b.deb)
	var paths []string
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 {
			paths = append(paths, strings.TrimPrefix(f[5], "."))
		}
	}
	for _, want := range packagedFiles {
		if !slices.Contains(paths, want) {
			t.Errorf("the .deb lacks %s", want)
		}
	}
	for _, p := range paths {
		if strings.HasPrefix(p, "/var/mail") {
			t.Errorf("the .deb ships %s: the mail root is never the package's", p)
		}
	}
	if v := run(t, "dpkg-deb", "-f", b.deb, "Version"); strings.TrimSpace(v) != testVersion+"-1" {
		t.Errorf("Version %q, want %s-1", v, testVersion)
	}
	ctl := t.TempDir()
	run(t, "dpkg-deb", "-e", b.deb, ctl)
	data, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(data))
	slices.Sort(got)
	if !slices.Equal(got, configFiles) {
		t.Errorf("conffiles %q, want %q", got, configFiles)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if _, err := os.Stat(filepath.Join(ctl, s)); err != nil {
			t.Errorf("no %s: %v", s, err)
		}
	}

	// The binary is static, stamped with version and commit, and built
	// without the build machine's paths.
	out := run(t, b.bin, "version")
	if !strings.Contains(out, testVersion) || !strings.Contains(out, testCommit) {
		t.Errorf("nfsdrop version = %q, want %s and %s", out, testVersion, testCommit)
	}
	if file, err := exec.LookPath("file"); err == nil {
		if out := run(t, file, b.bin); !strings.Contains(out, "statically linked") {
			t.Errorf("binary is not static: %s", out)
		}
	}
	bin, err := os.ReadFile(b.bin)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(bin), testenv.RepoRoot()) {
		t.Errorf("binary contains the build path %s (not built with -trimpath)", testenv.RepoRoot())
	}
}

// TestDebLintian: no lintian errors; warnings and informational tags are
// logged (docs/install.md explains the overrides).
func TestDebLintian(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "lintian", "lintian")
	b := packages(t)
	cmd := exec.Command("lintian", "--pedantic", "--display-info", b.deb)
	out, _ := cmd.CombinedOutput()
	t.Logf("lintian:\n%s", out)
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "E: ") {
			t.Errorf("lintian error: %s", sc.Text())
		}
	}
	if cmd.ProcessState.ExitCode() > 2 {
		t.Errorf("lintian failed to run: %s", out)
	}
}

// TestDebInstallChroot installs, upgrades, removes and purges the .deb in
// a throwaway Debian root (debootstrap, cached; an overlay mount per test).
func TestDebInstallChroot(t *testing.T) {
	t.Parallel()
	b := packages(t)
	root := debianChroot(t)
	pkg := "/tmp/" + filepath.Base(b.deb)
	copyFile(t, b.deb, filepath.Join(root, pkg))
	in := func(args ...string) string {
		t.Helper()
		return run(t, "chroot", append([]string{root}, args...)...)
	}
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return err == nil
	}

	in("dpkg", "-i", pkg)
	if out := in("/usr/sbin/nfsdrop", "version"); !strings.Contains(out, testVersion) {
		t.Errorf("nfsdrop version in the chroot: %q", out)
	}
	// The shipped configuration and user database pass nfsdrop's own check.
	in("/usr/sbin/nfsdrop", "check")
	for _, f := range packagedFiles {
		if !exists(f) {
			t.Errorf("%s not installed", f)
		}
	}
	passwd := in("getent", "passwd", "nfsdrop")
	if !strings.Contains(passwd, ":/usr/sbin/nologin") {
		t.Errorf("nfsdrop user: %q", passwd)
	}
	if out := in("stat", "-c", "%a %U:%G", "/etc/nfsdrop/users"); strings.TrimSpace(out) != "640 root:nfsdrop" {
		t.Errorf("/etc/nfsdrop/users is %q, want 640 root:nfsdrop", out)
	}
	if !exists("/var/mail/nfsdrop") {
		t.Error("/var/mail/nfsdrop (the mount point) not created")
	}
	// Enabled on installation: the LMTP socket and the sweeper's timer;
	// POP3 waits for a certificate.
	for unit, want := range map[string]bool{
		"sockets.target.wants/nfsdrop-lmtp.socket": true,
		"timers.target.wants/nfsdrop-clean.timer":  true,
		"sockets.target.wants/nfsdrop-pop3.socket": false,
	} {
		if got := exists("/etc/systemd/system/" + unit); got != want {
			t.Errorf("%s enabled = %v, want %v", unit, got, want)
		}
	}

	// Upgrade (the same package again, which dpkg treats as one): the
	// administrator's configuration stays.
	cfg := filepath.Join(root, "etc/nfsdrop/nfsdrop.toml")
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("# changed by the administrator\n")
	f.Close()
	in("dpkg", "-i", pkg)
	if data, _ := os.ReadFile(cfg); !strings.Contains(string(data), "# changed by the administrator") {
		t.Error("an upgrade overwrote the edited /etc/nfsdrop/nfsdrop.toml")
	}

	// Mail in the store, which removal and purge must never touch.
	mail := "/var/mail/nfsdrop/example.org/alice/Maildir/new/1.M1P1.host,S=5"
	if err := os.MkdirAll(filepath.Dir(filepath.Join(root, mail)), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, mail), "mail\n", 0o600)

	in("dpkg", "-r", "nfsdrop")
	if exists("/usr/sbin/nfsdrop") {
		t.Error("remove left /usr/sbin/nfsdrop")
	}
	if !exists("/etc/nfsdrop/nfsdrop.toml") {
		t.Error("remove (not purge) deleted the configuration")
	}
	// As with debhelper, the units are masked on removal (their files are
	// gone, their enablement is remembered for a reinstallation).
	if !exists("/etc/systemd/system/nfsdrop-lmtp.socket") {
		t.Error("remove did not mask nfsdrop-lmtp.socket")
	}

	in("dpkg", "-P", "nfsdrop")
	if exists("/etc/nfsdrop") {
		t.Error("purge left /etc/nfsdrop")
	}
	if out, err := exec.Command("chroot", root, "getent", "passwd", "nfsdrop").CombinedOutput(); err == nil {
		t.Errorf("purge left the nfsdrop user: %s", out)
	}
	if out, err := exec.Command("chroot", root, "getent", "group", "nfsdrop").CombinedOutput(); err == nil {
		t.Errorf("purge left the nfsdrop group: %s", out)
	}
	if links, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/*/nfsdrop-*")); len(links) > 0 {
		t.Errorf("purge left unit links: %q", links)
	}
	if links, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/nfsdrop-*")); len(links) > 0 {
		t.Errorf("purge left unit masks: %q", links)
	}
	if !exists(mail) {
		t.Errorf("purge removed mail (%s)", mail)
	}
}

// TestRPM inspects the .rpm and installs it into a scratch root (a
// throwaway Debian root, which has the shell and useradd its scriptlets
// need).
func TestRPM(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "rpm", "rpm")
	b := packages(t)
	list := run(t, "rpm", "-qpl", b.rpm)
	for _, want := range packagedFiles {
		if !slices.Contains(strings.Fields(list), want) {
			t.Errorf("the .rpm lacks %s", want)
		}
	}
	info := run(t, "rpm", "-qpi", b.rpm)
	for _, want := range []string{"Name        : nfsdrop", "Version     : " + testVersion, "Architecture: x86_64"} {
		if !strings.Contains(info, want) {
			t.Errorf("rpm -qpi lacks %q:\n%s", want, info)
		}
	}
	conf := strings.Fields(run(t, "rpm", "-qp", "--configfiles", b.rpm))
	slices.Sort(conf)
	if !slices.Equal(conf, configFiles) {
		t.Errorf("config files %q, want %q", conf, configFiles)
	}
	// %config(noreplace): an upgrade keeps an edited file and writes the
	// new one as .rpmnew.
	flags := run(t, "rpm", "-qp", "--queryformat", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", b.rpm)
	for _, f := range configFiles {
		if !regexp.MustCompile(regexp.QuoteMeta(f) + ` c?n`).MatchString(flags) {
			t.Errorf("%s is not %%config(noreplace):\n%s", f, flags)
		}
	}
	scripts := run(t, "rpm", "-qp", "--scripts", b.rpm)
	for _, want := range []string{"preinstall scriptlet", "useradd --system", "postinstall scriptlet",
		"preuninstall scriptlet", "disable --now", "postuninstall scriptlet", "try-restart"} {
		if !strings.Contains(scripts, want) {
			t.Errorf("rpm --scripts lacks %q", want)
		}
	}

	testenv.RequireRoot(t)
	root := debianChroot(t)
	run(t, "rpm", "--root", root, "--nodeps", "-i", b.rpm)
	for _, f := range packagedFiles {
		if _, err := os.Lstat(filepath.Join(root, f)); err != nil {
			t.Errorf("rpm did not install %s: %v", f, err)
		}
	}
	if out := run(t, "chroot", root, "/usr/sbin/nfsdrop", "version"); !strings.Contains(out, testVersion) {
		t.Errorf("nfsdrop version: %q", out)
	}
	if _, err := exec.Command("chroot", root, "getent", "passwd", "nfsdrop").Output(); err != nil {
		t.Errorf("the %%pre scriptlet made no nfsdrop user")
	}
	run(t, "rpm", "--root", root, "-e", "nfsdrop")
	if _, err := os.Lstat(filepath.Join(root, "usr/sbin/nfsdrop")); err == nil {
		t.Error("rpm -e left /usr/sbin/nfsdrop")
	}
	if _, err := os.Lstat(filepath.Join(root, "var/mail/nfsdrop")); err != nil {
		t.Error("rpm -e removed the mail root")
	}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, string(data), 0o644)
}

// debianChroot returns a fresh, writable Debian root for one test: an
// overlay over a debootstrap'd minimal system cached in
// /var/cache/nfsdrop-test (made on first use, from the machine's own
// Debian mirror and release), or a copy of it where overlay mounts fail.
func debianChroot(t testing.TB) string {
	t.Helper()
	testenv.Require(t, "debootstrap", "debootstrap")
	testenv.RequireRoot(t)
	base := cachedBase(t)
	dir, err := os.MkdirTemp(scratch, "chroot")
	if err != nil {
		t.Fatal(err)
	}
	upper, work, root := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + base + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", root, "overlay", 0, opts); err == nil {
		t.Cleanup(func() {
			syscall.Unmount(root, syscall.MNT_DETACH)
			os.RemoveAll(dir)
		})
		return root
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	run(t, "cp", "-a", base+"/.", root)
	return root
}

// cachedBase makes the debootstrap cache on first use.
func cachedBase(t testing.TB) string {
	t.Helper()
	mirror, suite := debianMirror()
	cache := "/var/cache/nfsdrop-test"
	base := filepath.Join(cache, suite+"-minbase")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(base, "usr/bin/dpkg")); err == nil {
		return base
	}
	tmp := base + ".tmp"
	os.RemoveAll(tmp)
	t.Logf("debootstrap --variant=minbase %s %s %s (once; cached)", suite, base, mirror)
	out, err := exec.Command("debootstrap", "--variant=minbase", suite, tmp, mirror).CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, base); err != nil {
		t.Fatal(err)
	}
	return base
}

// debianMirror finds the Debian mirror and release this machine's apt
// uses, so that debootstrap reaches what apt reaches.
func debianMirror() (mirror, suite string) {
	mirror, suite = "http://deb.debian.org/debian", "bookworm"
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		if m := regexp.MustCompile(`(?m)^VERSION_CODENAME=(\w+)`).FindSubmatch(data); m != nil {
			suite = string(m[1])
		}
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(data), "\n\n") {
			uris := regexp.MustCompile(`(?m)^URIs:\s*(\S+)`).FindStringSubmatch(stanza)
			suites := regexp.MustCompile(`(?m)^Suites:(.*)$`).FindStringSubmatch(stanza)
			if uris != nil && suites != nil && slices.Contains(strings.Fields(suites[1]), suite) {
				return uris[1], suite
			}
		}
	}
	if data, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		re := regexp.MustCompile(`(?m)^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+` + regexp.QuoteMeta(suite) + `\s`)
		if m := re.FindSubmatch(data); m != nil {
			return string(m[1]), suite
		}
	}
	return mirror, suite
}
