package lab

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// The checks of RunSystemd, in order. Each is what an administrator would
// type, run in the VM through the agent.

// sandboxRefusal matches journal lines in which the syscall filter or the
// sandbox refused something.
const sandboxRefusal = `SIGSYS|EPERM|Operation not permitted|audit.*(seccomp|SECCOMP)|status=31/SYS|Bad system call`

func (r *systemdRun) steps(ctx context.Context) {
	r.step("boot: systemd as PID 1, no failed unit", func() (string, error) {
		out, err := r.sh(ctx, "ps -o comm= -p 1; systemd-analyze time | head -1; systemd-analyze blame --no-pager | head -3; systemctl --failed --no-legend --plain")
		if err != nil {
			return out, err
		}
		if !strings.HasPrefix(out, "systemd") {
			return out, fmt.Errorf("PID 1 is not systemd: %q", out)
		}
		lines := strings.Split(out, "\n")
		if len(lines) > 5 {
			return out, fmt.Errorf("failed units: %q", lines[5:])
		}
		return strings.Join(strings.Fields(strings.Join(lines[1:], " ")), " "), nil
	})
	r.step("NFS mail root mounted from /etc/fstab before remote-fs.target", func() (string, error) {
		out, err := r.sh(ctx, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /var/mail/nfsdrop && systemctl show -p After -p Before var-mail-nfsdrop.mount | tr ' ' '\\n' | grep -x 'remote-fs.target\\|Before=remote-fs.target'")
		if err != nil {
			return out, err
		}
		f := strings.Fields(out)
		if len(f) < 2 || !strings.HasPrefix(f[1], "nfs") {
			return out, fmt.Errorf("not an NFS mount: %q", out)
		}
		return f[0] + " " + f[1], nil
	})
	install := "nfsdrop"
	if r.o.Long {
		install += "=" + r.o.PreviousVersion + "-1"
	}
	r.step("apt-get install "+install+" from the signed repository", func() (string, error) {
		repo := "http://" + ClientAddr + sdRepo
		cmd := "curl -fsS " + repo + "/apt/nfsdrop-archive-keyring.gpg -o /etc/apt/keyrings/nfsdrop.gpg && " +
			"echo 'deb [signed-by=/etc/apt/keyrings/nfsdrop.gpg] " + repo + "/apt stable main' >/etc/apt/sources.list.d/nfsdrop.list && " +
			"apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install " + install
		_, err := r.sh(ctx, "mkdir -p /etc/apt/keyrings && "+cmd)
		if err != nil {
			return "", err
		}
		return r.sh(ctx, "nfsdrop version")
	})
	r.step("after install: sockets listening, services not running", func() (string, error) {
		out, _, err := r.vm.Exec(ctx, "systemctl is-active nfsdrop-lmtp.socket nfsdrop-clean.timer nfsdrop-lmtp.service nfsdrop-pop3.service; ls -l /run/nfsdrop/lmtp")
		if err != nil {
			return out, err
		}
		f := strings.Fields(out)
		if len(f) < 4 || f[0] != "active" || f[1] != "active" || f[2] != "inactive" || f[3] != "inactive" {
			return out, fmt.Errorf("want socket and timer active, services inactive: %q", out)
		}
		if !strings.Contains(out, "srw-rw----") || !strings.Contains(out, "postfix") {
			return out, fmt.Errorf("socket is not 0660 group postfix: %q", out)
		}
		return "socket+timer active, services inactive", nil
	})
	r.step("configure as docs/postfix.md says: a user, the packaged Postfix examples", func() (string, error) {
		// The uid and gid of the mailbox: chown on the NFS mount.
		cmds := []string{
			"echo '" + sdUser + ":{PLAIN}" + sdPass + ":5000:5000::::' >>/etc/nfsdrop/users",
			"nfsdrop check",
			// docs/postfix.md: the packaged examples, as they are.
			"cat /usr/share/doc/nfsdrop/examples/postfix/master.cf >>/etc/postfix/master.cf",
			"cat /usr/share/doc/nfsdrop/examples/postfix/main.cf-lmtp-unix >>/etc/postfix/main.cf",
			"postconf -e 'myhostname = mx1.test' 'mydestination = localhost, mx1.test' 'inet_interfaces = loopback-only'",
			"systemctl restart postfix",
		}
		for _, c := range cmds {
			if out, err := r.sh(ctx, c); err != nil {
				return out, err
			}
		}
		return "", nil
	})
	r.step("first mail through Postfix starts nfsdrop-lmtp.service (socket activation)", func() (string, error) {
		if err := r.send(ctx, 1, "first"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 2*time.Minute); err != nil {
			log, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service -t postfix/lmtp -t postfix/local | tail -15")
			return log, err
		}
		owner, _ := r.sh(ctx, "stat -c '%u:%g' "+sdMaildir+"/new/*")
		if !strings.HasPrefix(owner, "5000:5000") {
			return owner, fmt.Errorf("message owned by %s, want 5000:5000 (chown on NFS)", owner)
		}
		return r.sh(ctx, "systemctl is-active nfsdrop-lmtp.service")
	})
	r.step("systemctl status shows the daemon's STATUS=; metrics answer", func() (string, error) {
		out, err := r.sh(ctx, "systemctl status --no-pager nfsdrop-lmtp.service | grep 'Status:'")
		if err != nil {
			return out, err
		}
		// The daemon's own listener, inside IPAddressAllow=localhost.
		if m, err := r.sh(ctx, "curl -fsS --max-time 30 http://127.0.0.1:9325/metrics | grep -c '^nfsdrop_'"); err != nil {
			return m, fmt.Errorf("metrics: %w", err)
		}
		return out, nil
	})
	r.step("POP3 (110) and POP3S (995) through their sockets, with curl", func() (string, error) {
		cmds := []string{
			"mkdir -p /etc/nfsdrop/tls && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mx1.test -keyout /etc/nfsdrop/tls/privkey.pem -out /etc/nfsdrop/tls/fullchain.pem 2>/dev/null",
			"systemctl enable --now nfsdrop-pop3.socket nfsdrop-pop3s.socket",
		}
		for _, c := range cmds {
			if out, err := r.sh(ctx, c); err != nil {
				return out, err
			}
		}
		list, err := r.sh(ctx, "curl -sS --max-time 60 pop3://"+strings.Replace(sdUser, "@", "%40", 1)+":"+sdPass+"@127.0.0.1/")
		if err != nil {
			return list, err
		}
		retr, err := r.sh(ctx, "curl -sS --max-time 60 -k pop3s://"+strings.Replace(sdUser, "@", "%40", 1)+":"+sdPass+"@127.0.0.1/1")
		if err != nil {
			return retr, err
		}
		if !strings.Contains(retr, "Subject: first 1") {
			return retr, fmt.Errorf("POP3S RETR 1 did not return the first mail")
		}
		return "LIST " + strings.Join(strings.Fields(list), " ") + "; RETR over POP3S ok", nil
	})
	r.step("systemctl reload applies a config change (log level) without a restart or a dropped connection", func() (string, error) {
		pid := r.mainPID(ctx, "nfsdrop-lmtp.service")
		if _, err := r.sh(ctx, "sed -i 's/^level = \"info\"/level = \"debug\"/' /etc/nfsdrop/nfsdrop.toml && systemctl reload nfsdrop-lmtp.service"); err != nil {
			return "", err
		}
		if after := r.mainPID(ctx, "nfsdrop-lmtp.service"); after != pid {
			return "", fmt.Errorf("main PID changed %s -> %s: reload restarted", pid, after)
		}
		if err := r.send(ctx, 1, "after-reload"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 2*time.Minute); err != nil {
			return "", err
		}
		// A POP3 connection opened before a reload goes on after it:
		// greeting read, reload, then the login and a STAT on the same
		// connection (one line: the lab agent runs one line per call).
		held, err := r.sh(ctx, `bash -c 'exec 3<>/dev/tcp/127.0.0.1/110 && read -t 30 -r g <&3 && echo "$g" | grep -q "^+OK" && pid=$(systemctl show -p MainPID --value nfsdrop-pop3.service) && systemctl reload nfsdrop-pop3.service && test "$(systemctl show -p MainPID --value nfsdrop-pop3.service)" = "$pid" && printf "USER `+sdUser+`\r\n" >&3 && read -t 30 -r a <&3 && printf "PASS `+sdPass+`\r\n" >&3 && read -t 30 -r b <&3 && printf "STAT\r\n" >&3 && read -t 30 -r c <&3 && printf "QUIT\r\n" >&3 && read -t 30 -r d <&3 && echo "$a|$b|$c|$d" && case "$b$c" in +OK*+OK*) ;; *) exit 1;; esac'`)
		if err != nil {
			return held, fmt.Errorf("a POP3 connection across a reload: %w", err)
		}
		return "same PID " + pid + "; a POP3 connection held across a reload of nfsdrop-pop3: " + strings.TrimSpace(held), nil
	})
	r.step("scanning on with a real clamd: clean mail delivered, EICAR refused", func() (string, error) {
		eicar := `X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
		cmds := []string{
			// A one-signature database (no freshclam: no network);
			// clamav-daemon.service wants main.cvd, hence the drop-in.
			"printf '%s' '" + eicar + "' >/tmp/eicar.txt && echo \"Test.EICAR:0:*:$(od -An -tx1 -v /tmp/eicar.txt | tr -d ' \\n')\" >/var/lib/clamav/test.ndb",
			"mkdir -p /etc/systemd/system/clamav-daemon.service.d && printf '[Unit]\\nConditionPathExistsGlob=\\n' >/etc/systemd/system/clamav-daemon.service.d/lab.conf",
			"systemctl daemon-reload && systemctl enable --now clamav-daemon.service",
			"for i in $(seq 1 120); do test -S /run/clamav/clamd.ctl && break; sleep 1; done; test -S /run/clamav/clamd.ctl",
			"sed -i '/^\\[scan\\]/,/^\\[/ s/^enabled = false/enabled = true/' /etc/nfsdrop/nfsdrop.toml && nfsdrop check && systemctl reload nfsdrop-lmtp.service",
		}
		for _, c := range cmds {
			if out, err := r.sh(ctx, c); err != nil {
				return out, err
			}
		}
		if err := r.send(ctx, 1, "scanned"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 2*time.Minute); err != nil {
			return "", err
		}
		// Clean mail carries no header; lmtpd logs each verdict at
		// debug, the level the reload step set.
		hdr, err := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service | grep -m1 -o 'virus scan.*result=clean'")
		if err != nil {
			return hdr, fmt.Errorf("no clean verdict from clamd in lmtpd's log: %v", err)
		}
		// The virus: refused with 554 5.7.1, so Postfix bounces it
		// (the one bounce the run expects; from the null sender, so
		// that no bounce message waits in the queue).
		if _, err := r.sh(ctx, "printf 'Subject: virus\\n\\n%s\\n' \"$(cat /tmp/eicar.txt)\" | sendmail -f '<>' "+sdUser); err != nil {
			return "", err
		}
		r.expectBounces++
		for i := 0; i < 120; i++ {
			if out, _ := r.sh(ctx, "journalctl -q --no-pager -t postfix/lmtp | grep -m1 'status=bounced.*5.7.1' || true"); out != "" {
				return strings.TrimSpace(hdr) + "; EICAR: " + tailString(out, 120), nil
			}
			time.Sleep(time.Second)
		}
		return "", fmt.Errorf("EICAR mail not refused with 5.7.1 within 2 minutes")
	})
	// The packaged units as they are, before the drop-ins below, so
	// that the scores compare with the offline ones.
	r.step("systemd-analyze security in the VM", func() (string, error) {
		var parts []string
		for _, svc := range []string{"nfsdrop-lmtp.service", "nfsdrop-pop3.service", "nfsdrop-clean.service"} {
			out, err := r.sh(ctx, "systemd-analyze security --no-pager "+svc+" | tail -1")
			if err != nil {
				return out, err
			}
			r.rep.Security[svc] = out
			m := regexp.MustCompile(`level for \S+: (\S+ \S+)`).FindStringSubmatch(out)
			if m == nil {
				return out, fmt.Errorf("no exposure level for %s", svc)
			}
			parts = append(parts, svc+" "+m[1])
		}
		return strings.Join(parts, ", "), nil
	})
	if r.o.Long {
		// About 40 s (a slapd, a deferral, a restart with the drop-in, a
		// retry): the long run only.
		r.ldapStep(ctx)
	}
	r.userStep(ctx)
	if r.o.Long {
		r.longSteps(ctx)
		r.purgeStep(ctx)
	}
	r.step("journal: no SIGSYS/EPERM from the sandbox during the run", func() (string, error) {
		out, _, err := r.vm.Exec(ctx, "journalctl -q --no-pager | grep -E '"+sandboxRefusal+"' | grep -v 'lab-agent\\|labagent' | tail -40")
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line = strings.TrimSpace(line); line != "" && !r.expectedRefusals[line] {
				r.rep.Journal = append(r.rep.Journal, line)
			}
		}
		if len(r.rep.Journal) > 0 {
			return "", fmt.Errorf("%d journal lines name a refusal", len(r.rep.Journal))
		}
		return "clean", nil
	})
}

// longSteps are the slow ones: faults and upgrades under a stream of mail.
func (r *systemdRun) longSteps(ctx context.Context) {
	n := r.o.Messages
	r.step("kill -STOP of lmtpd: the watchdog restarts it within WatchdogSec", func() (string, error) {
		pid := r.mainPID(ctx, "nfsdrop-lmtp.service")
		if _, err := r.sh(ctx, "kill -STOP "+pid); err != nil {
			return "", err
		}
		t0 := time.Now()
		for time.Since(t0) < 2*time.Minute {
			// systemd kills the hung process (SIGABRT) and
			// Restart=on-failure starts a new one.
			if after := r.mainPID(ctx, "nfsdrop-lmtp.service"); after != pid && after != "0" && after != "" {
				took := time.Since(t0)
				wd, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-lmtp.service | grep -i -m1 'watchdog timeout' || true")
				if wd == "" {
					return "", fmt.Errorf("PID %s -> %s, but no watchdog timeout in the journal", pid, after)
				}
				if err := r.send(ctx, 1, "after-watchdog"); err != nil {
					return "", err
				}
				return fmt.Sprintf("PID %s -> %s after %.0fs", pid, after, took.Seconds()), r.waitMail(ctx, r.sent, 2*time.Minute)
			}
			time.Sleep(2 * time.Second)
		}
		return "", fmt.Errorf("PID %s still the main PID after 2 minutes", pid)
	})
	r.step(fmt.Sprintf("systemctl restart while Postfix streams %d mails: none lost or bounced", n), func() (string, error) {
		if err := r.sendBackground(ctx, n, "restart"); err != nil {
			return "", err
		}
		time.Sleep(2 * time.Second)
		for i := 0; i < 2; i++ {
			if out, err := r.sh(ctx, "systemctl restart nfsdrop-lmtp.service"); err != nil {
				return out, err
			}
		}
		if err := r.waitSender(ctx, "restart"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 5*time.Minute); err != nil {
			return "", err
		}
		return r.noBounces(ctx)
	})
	r.step(fmt.Sprintf("systemctl stop/start while Postfix streams %d mails", n), func() (string, error) {
		if err := r.sendBackground(ctx, n, "stopstart"); err != nil {
			return "", err
		}
		time.Sleep(time.Second)
		if out, err := r.sh(ctx, "systemctl stop nfsdrop-lmtp.service && sleep 3 && systemctl start nfsdrop-lmtp.service"); err != nil {
			return out, err
		}
		if err := r.waitSender(ctx, "stopstart"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 5*time.Minute); err != nil {
			return "", err
		}
		return r.noBounces(ctx)
	})
	r.step(fmt.Sprintf("apt-get upgrade %s -> this version while mail flows; config kept", r.o.PreviousVersion), func() (string, error) {
		if err := r.sendBackground(ctx, n, "upgrade"); err != nil {
			return "", err
		}
		time.Sleep(time.Second)
		if out, err := r.sh(ctx, "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Options::=--force-confold install nfsdrop"); err != nil {
			return out, err
		}
		if err := r.waitSender(ctx, "upgrade"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 5*time.Minute); err != nil {
			return "", err
		}
		if _, err := r.sh(ctx, "grep -q '^level = \"debug\"' /etc/nfsdrop/nfsdrop.toml && grep -q '^"+sdUser+"' /etc/nfsdrop/users"); err != nil {
			return "", fmt.Errorf("the edited configuration was not kept")
		}
		v, _ := r.sh(ctx, "dpkg-query -W -f '${Version}' nfsdrop; echo; nfsdrop version")
		nb, err := r.noBounces(ctx)
		return strings.Join(strings.Fields(v), " ") + "; " + nb, err
	})
	r.step("sweeper: timer scheduled, service runs", func() (string, error) {
		if _, err := r.sh(ctx, "systemctl list-timers --no-pager nfsdrop-clean.timer | grep -q nfsdrop-clean.timer"); err != nil {
			return "", fmt.Errorf("nfsdrop-clean.timer not scheduled")
		}
		out, err := r.sh(ctx, "systemctl start nfsdrop-clean.service; systemctl show -p Result -p ExecMainStatus nfsdrop-clean.service")
		if err != nil || !strings.Contains(out, "Result=success") {
			log, _ := r.sh(ctx, "journalctl -q --no-pager -u nfsdrop-clean.service | tail -10")
			return log, fmt.Errorf("nfsdrop-clean.service: %q %v", out, err)
		}
		return strings.Join(strings.Fields(out), " "), nil
	})
	r.step("reboot: the NFS mount before the services, mail delivered again", func() (string, error) {
		if _, err := r.vm.Ctl(ctx, "reboot"); err != nil {
			return "", err
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		r.vm.Wait(wctx) // -no-reboot: qemu exits; boot it again
		if err := r.boot(ctx, &r.rep.Reboot); err != nil {
			return "", err
		}
		if err := r.send(ctx, 1, "after-reboot"); err != nil {
			return "", err
		}
		if err := r.waitMail(ctx, r.sent, 3*time.Minute); err != nil {
			return "", err
		}
		out, err := r.sh(ctx, "systemctl show -p ActiveEnterTimestampMonotonic --value var-mail-nfsdrop.mount; systemctl show -p ExecMainStartTimestampMonotonic --value nfsdrop-lmtp.service")
		if err != nil {
			return out, err
		}
		f := strings.Fields(out)
		if len(f) != 2 || len(f[0]) > len(f[1]) || (len(f[0]) == len(f[1]) && f[0] > f[1]) {
			return out, fmt.Errorf("mount at %v, service at %v (monotonic µs)", f, f)
		}
		return fmt.Sprintf("mount at %sµs, lmtpd at %sµs", f[0], f[1]), nil
	})
}

// purgeStep removes the package with its configuration: the mail stays.
func (r *systemdRun) purgeStep(ctx context.Context) {
	r.step("apt-get purge keeps the mail", func() (string, error) {
		before, err := r.countMail(ctx)
		if err != nil {
			return "", err
		}
		if out, err := r.sh(ctx, "DEBIAN_FRONTEND=noninteractive apt-get -q -y purge nfsdrop"); err != nil {
			return out, err
		}
		after, err := r.countMail(ctx)
		if err != nil {
			return "", err
		}
		if after != before || after != r.sent {
			return "", fmt.Errorf("%d messages before purge, %d after, %d sent", before, after, r.sent)
		}
		return fmt.Sprintf("%d messages kept", after), nil
	})
}
