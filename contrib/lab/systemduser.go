package lab

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// userDropIn is docs/install.md's "One owner for all mail" drop-in.
const userDropIn = "[Service]\\nUser=nfsdrop\\nGroup=nfsdrop\\n"

// userStep switches the servers to the nfsdrop user as docs/install.md
// ("One owner for all mail") and docs/nfs.md say, then delivers a mail and
// fetches it by POP3 and POP3S. The rest of the run (the long steps:
// watchdog, restarts, upgrade, sweeper, reboot) keeps this setup.
func (r *systemdRun) userStep(ctx context.Context) {
	r.step("User=nfsdrop drop-in as docs/install.md says: deliver, POP3, POP3S", func() (string, error) {
		// As root the key needed no group: CAP_DAC_OVERRIDE read it.
		// As nfsdrop it must be readable by that user (docs/install.md).
		before, _ := r.sh(ctx, "setpriv --reuid nfsdrop --regid nfsdrop --init-groups head -c0 /etc/nfsdrop/tls/privkey.pem 2>&1 && echo readable || true")
		cmds := []string{
			"chgrp nfsdrop /etc/nfsdrop/tls/privkey.pem && chmod 0640 /etc/nfsdrop/tls/privkey.pem",
			"for u in nfsdrop-lmtp nfsdrop-pop3 nfsdrop-clean; do mkdir -p /etc/systemd/system/$u.service.d && printf '" + userDropIn + "' >/etc/systemd/system/$u.service.d/user.conf; done",
			// uid/gid fields left empty: one owner for all mail.
			"sed -i 's/^\\(" + sdUser + ":[^:]*\\):5000:5000:/\\1:::/' /etc/nfsdrop/users && grep -q '^" + sdUser + ":[^:]*:::' /etc/nfsdrop/users && nfsdrop check",
			// The mail root (on the export) belongs to nfsdrop.
			"chown -R nfsdrop:nfsdrop /var/mail/nfsdrop",
			"systemctl daemon-reload && systemctl restart nfsdrop-lmtp.service nfsdrop-pop3.service",
		}
		for _, c := range cmds {
			if out, err := r.sh(ctx, c); err != nil {
				log, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service -u nfsdrop-pop3.service | grep -v 'systemd\\[1\\]' | tail -12")
				return out + "\n" + log, err
			}
		}
		if err := r.send(ctx, 1, "as-nfsdrop"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 2*time.Minute); err != nil {
			log, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service -u nfsdrop-lmtp.socket -t postfix/lmtp | tail -8")
			return log, err
		}
		var users []string
		for _, unit := range []string{"nfsdrop-lmtp.service", "nfsdrop-pop3.service"} {
			pid := r.mainPID(ctx, unit)
			out, err := r.sh(ctx, "ps -o user= -p "+pid+"; grep -E '^(Uid|Gid|CapEff):' /proc/"+pid+"/status | tr -s '\\t' ' '")
			if err != nil {
				return out, err
			}
			if f := strings.Fields(out); len(f) == 0 || f[0] != "nfsdrop" {
				return out, fmt.Errorf("%s (PID %s) runs as %q, want nfsdrop", unit, pid, out)
			}
			users = append(users, unit+" PID "+pid+": "+strings.Join(strings.Fields(out), " "))
		}
		owner, _ := r.sh(ctx, "stat -c %U:%G $(ls -t "+sdMaildir+"/new/* | head -1)")
		if owner != "nfsdrop:nfsdrop" {
			return owner, fmt.Errorf("the new message belongs to %s, want nfsdrop:nfsdrop", owner)
		}
		// The socket belongs to the socket unit, not to RuntimeDirectory=:
		// Postfix must still reach it.
		if sock, err := r.sh(ctx, "stat -c '%U:%G %a' /run/nfsdrop/lmtp"); err != nil || sock != "root:postfix 660" {
			return sock, fmt.Errorf("/run/nfsdrop/lmtp is %q, want root:postfix 660 (%v)", sock, err)
		}
		user := strings.Replace(sdUser, "@", "%40", 1)
		if list, err := r.sh(ctx, "curl -sS --max-time 60 pop3://"+user+":"+sdPass+"@127.0.0.1/"); err != nil {
			return list, fmt.Errorf("POP3 as nfsdrop: %w", err)
		}
		// The newest message is listed last; look at the last three.
		n := r.sent
		found, err := r.sh(ctx, fmt.Sprintf("for i in %d %d %d; do curl -sS --max-time 60 -k pop3s://%s:%s@127.0.0.1/$i | grep -q '^Subject: as-nfsdrop 1' && echo $i && break; done", n, n-1, n-2, user, sdPass))
		if err != nil || found == "" {
			log, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-pop3.service | tail -5")
			return log, fmt.Errorf("POP3S as nfsdrop: the mail delivered as nfsdrop not retrieved (%v)", err)
		}
		return "TLS key as nfsdrop before chgrp: " + tailString(before, 80) + "; " + strings.Join(users, "; ") + "; message " + owner + "; POP3 and POP3S ok", nil
	})
}
