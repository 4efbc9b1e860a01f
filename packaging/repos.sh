#!/usr/bin/env bash
# Makes an APT and a YUM/DNF repository of the nfsdrop packages in DIR:
#
#   packaging/repos.sh DIR
#
# build.sh runs it after building; it can be run again by itself. Every
# nfsdrop_*.deb and nfsdrop-*.rpm in DIR goes in, so the repositories offer
# each version built into DIR (what an upgrade test needs). Writes
#
#   DIR/apt/pool/main/n/nfsdrop/*.deb
#   DIR/apt/dists/stable/{Release,Release.gpg,InRelease}
#   DIR/apt/dists/stable/main/binary-amd64/{Packages,Packages.gz,Release}
#   DIR/apt/nfsdrop-archive-keyring.gpg      public key (binary, for signed-by=)
#   DIR/yum/*.rpm, DIR/yum/repodata/ (createrepo_c), repodata/repomd.xml.asc
#   DIR/yum/RPM-GPG-KEY-nfsdrop              public key (ASCII armour)
#
# The signing key is NFSDROP_SIGNING_KEY from the caller's gpg keyring; when
# it is unset, a throwaway key made once for tests, DIR/test-signing-key.asc.
set -euo pipefail

out="$(cd "${1:?usage: $0 DIR}" && pwd)"
for tool in gpg dpkg-scanpackages createrepo_c; do
	if ! command -v "$tool" >/dev/null; then
		echo "repos.sh: $tool is missing (Debian packages gpg, dpkg-dev, createrepo-c; NFSDROP_REPOS=no skips the repositories)" >&2
		exit 69
	fi
done

# A private keyring for this run, in a short path: gpg-agent's socket path
# must fit in a sockaddr_un.
export GNUPGHOME
GNUPGHOME="$(mktemp -d /tmp/nfsdrop-gpg.XXXXXX)"
cleanup() {
	gpgconf --kill gpg-agent >/dev/null 2>&1 || true
	rm -rf "$GNUPGHOME"
}
trap cleanup EXIT
key="${NFSDROP_SIGNING_KEY:-}"
if [ -n "$key" ]; then
	# The caller's keyring holds the real key: sign from there.
	cleanup
	trap - EXIT
	unset GNUPGHOME
else
	testkey="$out/test-signing-key.asc"
	if [ ! -s "$testkey" ]; then
		gpg --batch --quiet --passphrase '' --quick-gen-key \
			'nfsdrop test repository (throwaway, tests only) <test@nfsdrop.invalid>' ed25519 sign never
		gpg --batch --quiet --armor --export-secret-keys >"$testkey.tmp"
		mv "$testkey.tmp" "$testkey"
	else
		gpg --batch --quiet --import "$testkey"
	fi
	key="$(gpg --batch --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }')"
	echo "repos.sh: signing with the throwaway test key $key (set NFSDROP_SIGNING_KEY for a real one)" >&2
fi
sign() { gpg --batch --yes --quiet --local-user "$key" "$@"; }

# APT: a pool and one suite, "stable", with one component, "main".
apt="$out/apt"
rm -rf "$apt"
mkdir -p "$apt/pool/main/n/nfsdrop" "$apt/dists/stable/main/binary-amd64"
shopt -s nullglob
debs=("$out"/nfsdrop_*_amd64.deb)
rpms=("$out"/nfsdrop-*.x86_64.rpm)
[ ${#debs[@]} -gt 0 ] || { echo "repos.sh: no .deb in $out" >&2; exit 66; }
cp "${debs[@]}" "$apt/pool/main/n/nfsdrop/"
(
	cd "$apt"
	bin=dists/stable/main/binary-amd64
	dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null >"$bin/Packages"
	gzip -9nk "$bin/Packages"
	printf 'Archive: stable\nComponent: main\nOrigin: nfsdrop\nLabel: nfsdrop\nArchitecture: amd64\n' >"$bin/Release"
	cd dists/stable
	{
		printf 'Origin: nfsdrop\nLabel: nfsdrop\nSuite: stable\nCodename: stable\n'
		printf 'Date: %s\n' "$(LC_ALL=C date -u -R)"
		printf 'Architectures: amd64\nComponents: main\nDescription: nfsdrop packages\n'
		for sum in MD5Sum:md5sum SHA256:sha256sum; do
			echo "${sum%%:*}:"
			for f in main/binary-amd64/Packages main/binary-amd64/Packages.gz main/binary-amd64/Release; do
				printf ' %s %8d %s\n' "$(${sum#*:} <"$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
			done
		done
	} >Release
	sign --armor --detach-sign -o Release.gpg Release
	sign --clearsign -o InRelease Release
)
gpg --batch --export "$key" >"$apt/nfsdrop-archive-keyring.gpg"

# YUM/DNF: the .rpm files and their metadata, the metadata signed.
yum="$out/yum"
rm -rf "$yum"
mkdir -p "$yum"
if [ ${#rpms[@]} -gt 0 ]; then
	cp "${rpms[@]}" "$yum/"
	createrepo_c --quiet "$yum"
	sign --armor --detach-sign -o "$yum/repodata/repomd.xml.asc" "$yum/repodata/repomd.xml"
fi
gpg --batch --armor --export "$key" >"$yum/RPM-GPG-KEY-nfsdrop"

echo "$apt"
echo "$yum"
