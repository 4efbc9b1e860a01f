package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// previousVersion is the version of the older package the repository test
// upgrades from.
const previousVersion = "0.0.9"

// TestChangelog: the .deb carries packaging/changelog.yaml, an entry for
// every release.
func TestChangelog(t *testing.T) {
	b := packages(t)
	data := run(t, "sh", "-c", "zcat "+filepath.Join(b.root, "usr/share/doc/nfsdrop/changelog.Debian.gz"))
	releases := regexp.MustCompile(`(?m)^- semver: (\S+)$`).FindAllStringSubmatch(repoFile(t, "packaging/changelog.yaml"), -1)
	if len(releases) == 0 {
		t.Fatal("packaging/changelog.yaml has no release")
	}
	if releases[0][1] != testVersion {
		t.Errorf("newest entry of packaging/changelog.yaml is %s, VERSION says %s", releases[0][1], testVersion)
	}
	for _, r := range releases {
		if !strings.Contains(data, "nfsdrop ("+r[1]+")") {
			t.Errorf("changelog.Debian lacks release %s:\n%s", r[1], data)
		}
	}
	if !strings.HasPrefix(data, "nfsdrop ("+testVersion+")") {
		t.Errorf("changelog.Debian does not start with this release (%s):\n%s", testVersion, data)
	}
}

// TestRepositories: build.sh's APT and YUM repositories are signed with the
// key they export, and apt-get in a Debian root installs nfsdrop from the
// APT one and upgrades it from the previous version.
func TestRepositories(t *testing.T) {
	t.Parallel()
	b := packages(t)
	testenv.Require(t, "gpgv", "gpgv")
	testenv.Require(t, "createrepo-c", "createrepo_c")

	// A second directory with this build's .deb and .rpm and an older
	// version (the same binary, packaged as previousVersion): build.sh
	// makes the repositories of both.
	dist := t.TempDir()
	copyFile(t, b.deb, filepath.Join(dist, filepath.Base(b.deb)))
	copyFile(t, b.rpm, filepath.Join(dist, filepath.Base(b.rpm)))
	cmd := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "packaging", "build.sh"), "-o", dist)
	cmd.Env = append(os.Environ(), "NFSDROP_VERSION="+previousVersion, "NFSDROP_COMMIT="+testCommit, "NFSDROP_BINARY="+b.bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh (previous version): %v\n%s", err, out)
	}
	apt, yum := filepath.Join(dist, "apt"), filepath.Join(dist, "yum")

	aptKey := filepath.Join(apt, "nfsdrop-archive-keyring.gpg")
	suite := filepath.Join(apt, "dists", "stable")
	run(t, "gpgv", "--keyring", aptKey, filepath.Join(suite, "InRelease"))
	run(t, "gpgv", "--keyring", aptKey, filepath.Join(suite, "Release.gpg"), filepath.Join(suite, "Release"))
	yumKeyring := filepath.Join(t.TempDir(), "yum.gpg")
	run(t, "sh", "-c", "gpg --dearmor <"+filepath.Join(yum, "RPM-GPG-KEY-nfsdrop")+" >"+yumKeyring)
	run(t, "gpgv", "--keyring", yumKeyring, filepath.Join(yum, "repodata", "repomd.xml.asc"), filepath.Join(yum, "repodata", "repomd.xml"))
	primary, err := filepath.Glob(filepath.Join(yum, "repodata", "*-primary.xml.gz"))
	if err != nil || len(primary) != 1 {
		t.Fatalf("yum repodata: primary.xml.gz %q, %v", primary, err)
	}
	listing := run(t, "sh", "-c", "zcat "+primary[0])
	for _, v := range []string{previousVersion, testVersion} {
		if !strings.Contains(listing, `ver="`+v+`"`) {
			t.Errorf("the YUM repository lacks nfsdrop %s", v)
		}
	}

	// apt-get in a Debian root, with only this repository as a source.
	root := debianChroot(t)
	run(t, "cp", "-a", apt, filepath.Join(root, "srv", "nfsdrop-apt"))
	run(t, "install", "-D", "-m", "0644", aptKey, filepath.Join(root, "etc/apt/keyrings/nfsdrop.gpg"))
	writeFile(t, filepath.Join(root, "etc/apt/sources.list.d/nfsdrop.list"),
		"deb [signed-by=/etc/apt/keyrings/nfsdrop.gpg] file:/srv/nfsdrop-apt stable main\n", 0o644)
	only := []string{"-o", "Dir::Etc::sourcelist=sources.list.d/nfsdrop.list", "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Sandbox::User=root"}
	aptGet := func(args ...string) string {
		t.Helper()
		return run(t, "chroot", append(append([]string{root, "apt-get", "-q", "-y"}, only...), args...)...)
	}
	aptGet("update")
	aptGet("install", "nfsdrop="+previousVersion+"-1")
	installed := func() string {
		return strings.TrimSpace(run(t, "chroot", root, "dpkg-query", "-W", "-f", "${Version}", "nfsdrop"))
	}
	if v := installed(); v != previousVersion+"-1" {
		t.Fatalf("installed %s, want %s-1", v, previousVersion)
	}
	aptGet("install", "nfsdrop")
	if v := installed(); v != testVersion+"-1" {
		t.Errorf("after the upgrade: %s, want %s-1", v, testVersion)
	}
	if out := run(t, "chroot", root, "/usr/sbin/nfsdrop", "version"); !strings.Contains(out, testVersion) {
		t.Errorf("nfsdrop version = %q, want %s", out, testVersion)
	}
}
