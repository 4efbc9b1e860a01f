package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
)

// The user database on another host, in the lab's own address range
// (127.77.0.0/24 on its bridge: tests talk only to loopback addresses and
// to the hosts of the namespaces they made). The packaged units'
// IPAddressAllow=localhost admits all of 127.0.0.0/8, so on its own it
// would let the daemon reach this "other host" and prove nothing; the step
// therefore first narrows the sandbox to this machine's own loopback
// address with a drop-in (as a site's units allow only the machine
// itself), shows that the directory is then refused, and then adds the
// drop-in docs/install.md and the units' comments document, with the lab's
// range where they show 192.0.2.0/24.
const (
	remoteNet      = "127.77.0.0/24"
	remoteLDAPAddr = "127.77.0.5" // the lab's client namespace
	// ldapPass is alice's password in the directory, unlike sdPass (the
	// passwd-file's): a POP3 login with it proves the directory answered.
	ldapPass        = "ldap-secret"
	ldapServicePass = "service-secret"
)

// ldapDirectory is the directory's content: the service account nfsdrop
// binds as and alice, with the uid/gid of the passwd-file entry and no
// nfsdropMailbox, so that her mail goes to the same Maildir.
func ldapDirectory() (string, error) {
	alicePW, err := sshaHash(ldapPass)
	if err != nil {
		return "", err
	}
	servicePW, err := sshaHash(ldapServicePass)
	if err != nil {
		return "", err
	}
	return strings.Join([]string{
		"dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
		"dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n",
		"dn: ou=services,dc=example,dc=org\nobjectClass: organizationalUnit\nou: services\n",
		"dn: cn=nfsdrop,ou=services,dc=example,dc=org\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n" +
			"cn: nfsdrop\nuserPassword: " + servicePW + "\n",
		"dn: uid=alice,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n" +
			"uid: alice\ncn: Alice\nsn: Alice\nmail: " + sdUser + "\nuidNumber: 5000\ngidNumber: 5000\n" +
			"homeDirectory: /nonexistent\nuserPassword: " + alicePW + "\n",
	}, "\n"), nil
}

// sshaHash is slappasswd's default {SSHA}: base64(sha1(pw+salt)+salt).
func sshaHash(pw string) (string, error) {
	salt := make([]byte, 8)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	sum := sha1.Sum(append([]byte(pw), salt...))
	return "{SSHA}" + base64.StdEncoding.EncodeToString(append(sum[:], salt...)), nil
}

// startRemoteLDAP starts slapd on the host's loopback and makes it
// reachable from the VM as ldap://127.77.0.5 (port 389): the client
// namespace forwards its connections to slapd. It
// returns a function that stops both.
func (r *systemdRun) startRemoteLDAP(ctx context.Context) (func(), error) {
	ldif, err := ldapDirectory()
	if err != nil {
		return nil, err
	}
	srv, err := slapd.Start(ctx, slapd.Options{
		Schemas: []string{"contrib/ldap/nfsdrop.schema"},
		LDIF:    []string{ldif},
	})
	if err != nil {
		return nil, err
	}
	ln, err := r.l.Net.Listen(r.l.Net.Client, "tcp", remoteLDAPAddr+":389")
	if err != nil {
		srv.Close()
		return nil, err
	}
	target := strings.TrimPrefix(srv.URI, "ldap://")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		forward(ln, target)
	}()
	r.l.logf("systemd: slapd %s (pid %d) reachable from the VM as ldap://%s", srv.URI, srv.PID(), remoteLDAPAddr)
	return func() {
		ln.Close()
		wg.Wait()
		srv.Close()
	}, nil
}

// forward copies each connection accepted on ln to and from target until
// ln is closed.
func forward(ln net.Listener, target string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			up, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// ipAllowDropIn is the drop-in docs/install.md and the units' comments
// give for a user database on another host, with the lab's range.
const ipAllowDropIn = "[Service]\\nIPAddressAllow=" + remoteNet + "\\n"

// narrowDropIn narrows the units' sandbox to this machine's own loopback
// address (an empty IPAddressAllow= resets the list), so that the lab's
// other hosts count as "another host"; it sorts before ldap.conf.
const narrowDropIn = "[Service]\\nIPAddressAllow=\\nIPAddressAllow=127.0.0.1/32 ::1/128\\n"

// ldapStep switches the user database to the directory on 127.77.0.5: with
// the sandbox narrowed to this machine the daemon may not reach it, so the mail is
// deferred (never bounced); with the documented IPAddressAllow= drop-in
// Postfix's retry delivers it and a POP3 login binds to the directory.
// The user database goes back to the passwd-file at the end.
func (r *systemdRun) ldapStep(ctx context.Context) {
	r.step("LDAP on another host: blocked by the sandbox (4xx), then the IPAddressAllow= drop-in", func() (string, error) {
		stop, err := r.startRemoteLDAP(ctx)
		if err != nil {
			return "", err
		}
		defer stop()
		details, err := r.ldapBlockedThenAllowed(ctx)
		// Back to the passwd-file and the packaged sandbox whatever
		// happened, so that later steps need no directory.
		if _, rerr := r.sh(ctx, "rm -f /etc/systemd/system/nfsdrop-lmtp.service.d/10-narrow.conf /etc/systemd/system/nfsdrop-pop3.service.d/10-narrow.conf && systemctl daemon-reload && sed -i '/^\\[userdb\\]/,/^\\[/ s/^driver = \"ldap\"/driver = \"passwd-file\"/' /etc/nfsdrop/nfsdrop.toml && systemctl restart nfsdrop-lmtp.service nfsdrop-pop3.service"); rerr != nil && err == nil {
			err = fmt.Errorf("back to the passwd-file: %w", rerr)
		}
		return details, err
	})
}

func (r *systemdRun) ldapBlockedThenAllowed(ctx context.Context) (string, error) {
	setup := []string{
		// A site whose units allow only the machine itself.
		"for u in nfsdrop-lmtp nfsdrop-pop3; do mkdir -p /etc/systemd/system/$u.service.d && printf '" + narrowDropIn + "' >/etc/systemd/system/$u.service.d/10-narrow.conf; done && systemctl daemon-reload",
		// The path is open outside the sandbox: what blocks the
		// daemon below is the unit, not the network.
		"timeout 20 bash -c ': </dev/tcp/" + remoteLDAPAddr + "/389'",
		// The service account's password: readable by root and the
		// nfsdrop group, as the packaged config's comment asks.
		"printf '%s\\n' '" + ldapServicePass + "' >/etc/nfsdrop/ldap.password && chgrp nfsdrop /etc/nfsdrop/ldap.password && chmod 0640 /etc/nfsdrop/ldap.password",
		"sed -i -e '/^\\[userdb\\]/,/^\\[/ s/^driver = \"passwd-file\"/driver = \"ldap\"/' " +
			"-e '/^\\[ldap\\]/,/^\\[/ { s|^uris = .*|uris = [\"ldap://" + remoteLDAPAddr + "\"]|; s/^start_tls = true/start_tls = false/; s|^ca_file = .*|ca_file = \"\"| }' /etc/nfsdrop/nfsdrop.toml",
		"grep -q '^driver = \"ldap\"' /etc/nfsdrop/nfsdrop.toml && nfsdrop check",
		"systemctl restart nfsdrop-lmtp.service nfsdrop-pop3.service",
	}
	for _, c := range setup {
		if out, err := r.sh(ctx, c); err != nil {
			return out, err
		}
	}
	cursor, err := r.journalCursor(ctx)
	if err != nil {
		return "", err
	}
	deferredBefore := r.countJournal(ctx, "-t postfix/lmtp", "status=deferred")
	if err := r.send(ctx, 1, "ldap"); err != nil {
		return "", err
	}
	if err := r.waitJournal(ctx, "-t postfix/lmtp", "status=deferred", deferredBefore+1, 2*time.Minute); err != nil {
		return "", fmt.Errorf("without the drop-in: %w", err)
	}
	deferred, _ := r.sh(ctx, "journalctl -q --no-pager -t postfix/lmtp | grep 'status=deferred' | tail -1 | grep -o 'said: .*'")
	daemon, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service --after-cursor='"+cursor+"' | grep -m1 '"+remoteLDAPAddr+"' || true")
	if daemon == "" {
		return deferred, errors.New("without the drop-in: no journal line of lmtpd names the directory's address")
	}
	if q, _ := r.sh(ctx, "postqueue -j | wc -l"); q != "1" {
		return deferred, fmt.Errorf("without the drop-in: %s mails queued, want the deferred one", q)
	}
	if nb, err := r.noBounces(ctx); err != nil {
		return nb, err
	}
	// What the sandbox refused on purpose: the final journal check
	// leaves exactly these lines out.
	r.expectRefusals(ctx, cursor)

	allow := []string{
		"for u in nfsdrop-lmtp nfsdrop-pop3; do mkdir -p /etc/systemd/system/$u.service.d && printf '" + ipAllowDropIn + "' >/etc/systemd/system/$u.service.d/ldap.conf; done",
		"systemctl daemon-reload && systemctl restart nfsdrop-lmtp.service nfsdrop-pop3.service",
		"systemctl show -p IPAddressAllow --value nfsdrop-lmtp.service | grep -q '" + remoteNet + "'",
	}
	for _, c := range allow {
		if out, err := r.sh(ctx, c); err != nil {
			return out, err
		}
	}
	allowed, err := r.journalCursor(ctx)
	if err != nil {
		return "", err
	}
	if _, err := r.sh(ctx, "postqueue -f"); err != nil {
		return "", err
	}
	if err := r.waitMail(ctx, r.sent, 2*time.Minute); err != nil {
		return "", fmt.Errorf("with the drop-in: %w", err)
	}
	user := strings.Replace(sdUser, "@", "%40", 1)
	list, err := r.sh(ctx, "curl -sS --max-time 60 pop3://"+user+":"+ldapPass+"@127.0.0.1/")
	if err != nil {
		return list, fmt.Errorf("POP3 login with the directory's password: %w", err)
	}
	// The passwd-file's password is not the directory's: refused.
	if out, err := r.sh(ctx, "curl -sS --max-time 60 pop3://"+user+":"+sdPass+"@127.0.0.1/"); err == nil {
		return out, errors.New("POP3 accepted the passwd-file's password: the directory was not asked")
	}
	if out, _ := r.sh(ctx, "journalctl -q --no-pager --after-cursor='"+allowed+"' | grep -E '"+sandboxRefusal+"' | grep -v 'lab-agent\\|labagent' || true"); out != "" {
		return out, errors.New("with the drop-in: the journal names a refusal")
	}
	nb, err := r.noBounces(ctx)
	return "without: " + deferred + " / lmtpd: " + tailString(daemon, 160) + "; with: delivered after postqueue -f, POP3 LIST " +
		strings.Join(strings.Fields(list), " ") + " (bind as alice); " + nb, err
}

// journalCursor is the cursor of the journal's last entry.
func (r *systemdRun) journalCursor(ctx context.Context) (string, error) {
	out, err := r.sh(ctx, "journalctl -q -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'")
	if err != nil || out == "" {
		return "", fmt.Errorf("journal cursor: %q %v", out, err)
	}
	return out, nil
}

// countJournal counts the journal lines selected by match (journalctl
// arguments) that contain text.
func (r *systemdRun) countJournal(ctx context.Context, match, text string) int {
	out, _ := r.sh(ctx, "journalctl -q --no-pager "+match+" | grep -c '"+text+"' || true")
	var n int
	fmt.Sscan(out, &n)
	return n
}

// waitJournal waits until countJournal reaches want.
func (r *systemdRun) waitJournal(ctx context.Context, match, text string, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for r.countJournal(ctx, match, text) < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q in the journal (%s) within %v", text, match, timeout)
		}
		time.Sleep(time.Second)
	}
	return nil
}

// expectRefusals records the refusal lines logged after cursor, which the
// run caused on purpose.
func (r *systemdRun) expectRefusals(ctx context.Context, cursor string) {
	out, _ := r.sh(ctx, "journalctl -q --no-pager --after-cursor='"+cursor+"' | grep -E '"+sandboxRefusal+"' || true")
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			r.expectedRefusals[line] = true
			r.l.logf("systemd: expected refusal: %s", line)
		}
	}
}
