// Package packaging builds nfsdrop's .deb and .rpm (build.sh drives nfpm
// with nfpm.yaml) and holds their tests: lintian, installation, upgrade,
// removal and purge in a throwaway Debian chroot, the RPM in a scratch
// root, the systemd units (systemd-analyze verify and security, socket
// activation with the descriptor names the units declare), the Postfix
// snippets in a private Postfix instance, and the HAProxy configuration
// with PROXY protocol v2 in front of nfsdrop. It has no Go API.
package packaging
