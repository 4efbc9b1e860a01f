#!/usr/bin/env bash
# Builds the nfsdrop .deb and .rpm from one static binary:
#
#   packaging/build.sh [-o DIR]
#
# writes DIR/nfsdrop_VERSION_amd64.deb and DIR/nfsdrop-VERSION-1.x86_64.rpm
# (DIR defaults to dist/ at the top of the repository) and prints their
# paths. VERSION is $NFSDROP_VERSION when set, the tag vX.Y.Z when HEAD is
# tagged, and otherwise the file VERSION at the top of the repository. The
# packages' changelog is packaging/changelog.yaml (one entry per release),
# with an entry for this build on top when its version has none there.
#
# It then makes two package repositories of every package in DIR (so a
# DIR that holds several versions gives repositories to upgrade from):
# DIR/apt (dists/stable/main, Release signed as Release.gpg and InRelease,
# the public key as nfsdrop-archive-keyring.gpg) and DIR/yum (createrepo_c,
# repodata/repomd.xml.asc, the public key as RPM-GPG-KEY-nfsdrop). They are
# signed with the key NFSDROP_SIGNING_KEY names in the caller's gpg keyring;
# without it, with a throwaway test key generated once into
# DIR/test-signing-key.asc (never publish that one). Needs Go and the Go
# module proxy (nfpm is installed at a pinned version), gpg, dpkg-dev
# (dpkg-scanpackages) and createrepo-c; NFSDROP_REPOS=no skips the
# repositories.
#
# Environment: NFSDROP_VERSION, NFSDROP_COMMIT (default: git), NFSDROP_MAINTAINER,
# NFSDROP_LICENSE, NFSDROP_BINARY (package this prebuilt binary instead
# of building one; tests use it), NFSDROP_SIGNING_KEY, NFSDROP_REPOS,
# SOURCE_DATE_EPOCH (default: the commit's time, for reproducible packages).
set -euo pipefail

NFPM_MODULE=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="$repo/dist"
while getopts "o:" opt; do
	case "$opt" in
	o) out="$OPTARG" ;;
	*) echo "usage: $0 [-o DIR]" >&2; exit 64 ;;
	esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# Nothing built here belongs in git.
[ -e "$out/.gitignore" ] || printf '*\n' >"$out/.gitignore"

cd "$repo"
commit="${NFSDROP_COMMIT:-}"
if [ -z "$commit" ]; then
	commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
	if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
		commit="$commit-dirty"
	fi
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH
version="${NFSDROP_VERSION:-}"
if [ -z "$version" ]; then
	if tag="$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null)"; then
		version="${tag#v}"
	else
		version="$(tr -d ' \t\n' <VERSION)"
	fi
fi
case "$version" in
[0-9]*) ;;
*) echo "build.sh: version \"$version\" must start with a digit" >&2; exit 64 ;;
esac
export NFSDROP_VERSION="$version"
# The project has published no mail contact yet: the default maintainer
# is under the reserved .example domain (RFC 2606), so that nobody's
# address is invented; set NFSDROP_MAINTAINER when building for release.
export NFSDROP_MAINTAINER="${NFSDROP_MAINTAINER:-nfsdrop maintainers <maintainers@nfsdrop.example>}"
export NFSDROP_LICENSE="${NFSDROP_LICENSE:-Apache-2.0}"

stage="$(mktemp -d "${TMPDIR:-/tmp}/nfsdrop-pkg.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

# 1. The binary: static, no build paths, version and commit stamped.
if [ -n "${NFSDROP_BINARY:-}" ]; then
	install -m 0755 "$NFSDROP_BINARY" "$stage/nfsdrop"
else
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath \
		-ldflags "-s -w -buildid= -X main.version=$version -X main.commit=$commit" \
		-o "$stage/nfsdrop" ./cmd/nfsdrop
fi

# 2. Manual pages, from the CLI and the configuration reference.
mkdir -p "$stage/man"
NFSDROP_CONFIG= "$stage/nfsdrop" man -o "$stage/man" --config-reference docs/config.md
gzip -9n "$stage/man/nfsdrop.8" "$stage/man/nfsdrop.toml.5"

# 3. Configuration, units, scripts, documentation.
mkdir -p "$stage/etc" "$stage/systemd" "$stage/scripts" "$stage/doc/examples/postfix" "$stage/doc/examples/haproxy"
install -m 0644 contrib/nfsdrop.toml "$stage/etc/nfsdrop.toml"
install -m 0640 packaging/users "$stage/etc/users"
install -m 0644 contrib/systemd/*.socket contrib/systemd/*.service contrib/systemd/*.timer "$stage/systemd/"
cp -r packaging/scripts/deb packaging/scripts/rpm "$stage/scripts/"
install -m 0644 packaging/nfsdrop.sysusers packaging/lintian-overrides "$stage/"
install -m 0644 packaging/copyright "$stage/doc/copyright"
install -m 0644 README.md "$stage/doc/README.md"
for d in install postfix nfs haproxy migration troubleshooting config store; do
	install -m 0644 "docs/$d.md" "$stage/doc/$d.md"
done
install -m 0644 contrib/nfsdrop.toml "$stage/doc/examples/nfsdrop.toml"
install -m 0644 contrib/postfix/* "$stage/doc/examples/postfix/"
install -m 0644 contrib/haproxy/* "$stage/doc/examples/haproxy/"
# Debian wants documentation larger than 4 kB compressed.
find "$stage/doc" -type f -name '*.md' -size +4k -exec gzip -9n {} +
# The releases' entries, after one for this build unless it is a release.
if ! grep -qxF -- "- semver: $version" packaging/changelog.yaml; then
	cat >"$stage/changelog.yaml" <<CHANGELOG
- semver: $version
  date: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  packager: $NFSDROP_MAINTAINER
  deb:
    urgency: medium
    distributions: [unstable]
  changes:
    - commit: $commit
      note: Package built from commit $commit.
CHANGELOG
fi
grep -v '^#' packaging/changelog.yaml >>"$stage/changelog.yaml"

# 4. The packages.
deb="$out/nfsdrop_${version}_amd64.deb"
rpm="$out/nfsdrop-${version}-1.x86_64.rpm"
rm -f "$deb" "$rpm"
cd "$stage"
# nfpm, installed once at the pinned version into the user's cache.
nfpm_bin="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nfsdrop/nfpm-${NFPM_MODULE##*@}"
if [ ! -x "$nfpm_bin/nfpm" ]; then
	mkdir -p "$nfpm_bin"
	GOFLAGS= GOBIN="$nfpm_bin" go install "$NFPM_MODULE"
fi
nfpm() { "$nfpm_bin/nfpm" "$@"; }
nfpm package --config "$here/nfpm.yaml" --packager deb --target "$deb" >&2
nfpm package --config "$here/nfpm.yaml" --packager rpm --target "$rpm" >&2
echo "$deb"
echo "$rpm"
cd "$repo"
if [ "${NFSDROP_REPOS:-yes}" != no ]; then
	bash "$here/repos.sh" "$out" >&2
fi
