package main

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
)

const devUser = "demo@example.test"

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "run nfsdrop for trying it out: `serve --dev [DIR]`",
		ArgsUsage: "[DIR]",
		Description: `With --dev, needs no root, no LDAP and no Postfix: creates DIR (default
./nfsdrop-dev) holding a configuration, a passwd-file with one demo user
(its password printed once) and a mail root with its mount marker, then
serves LMTP and POP3 on free loopback ports and prints how to send a test
message and fetch it.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dev", Usage: "run on the embedded default in DIR", Required: true},
		},
		Action: func(c *cli.Context) error {
			dir := "nfsdrop-dev"
			if c.NArg() > 0 {
				dir = c.Args().First()
			}
			dir, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			cfgPath := filepath.Join(dir, "nfsdrop.toml")
			password, err := setupDev(dir, cfgPath)
			if err != nil {
				return exitError("serve --dev: "+err.Error(), exConfig)
			}
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			// Besides the Unix socket in DIR, listen on a free loopback
			// port (port 0 is not valid in a configuration file, where a
			// fixed port is what Postfix needs).
			cfg.LMTP.Listen = append(cfg.LMTP.Listen, "tcp:127.0.0.1:0")
			logFile, err := os.OpenFile(filepath.Join(dir, "nfsdrop.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			defer logFile.Close()
			// Metrics are on in development mode, on a free loopback port.
			d, err := newDaemonRun(cfg, cfgPath, logFile, "tcp:127.0.0.1:0")
			if err != nil {
				return exitError(err.Error(), exConfig)
			}
			if err := d.addLMTP(); err != nil {
				d.env.Close()
				return exitError(err.Error(), exConfig)
			}
			if err := d.addPOP3([]string{"tcp:127.0.0.1:0"}); err != nil {
				d.env.Close()
				return exitError(err.Error(), exConfig)
			}
			w := c.App.Writer
			d.ready = func(d *daemonRun) {
				lmtpAddrs, pop3Addrs := d.addr("lmtp"), d.addr("pop3")
				tcp := lmtpAddrs[len(lmtpAddrs)-1]
				pop := pop3Addrs[len(pop3Addrs)-1]
				fmt.Fprintf(w, "nfsdrop %s, development mode\n\n", versionString())
				fmt.Fprintf(w, "  config    %s\n  log       %s\n  mail root %s\n", cfgPath, filepath.Join(dir, "nfsdrop.log"), cfg.Store.MailRoot)
				fmt.Fprintf(w, "  LMTP      %s  and unix:%s\n", tcp, lmtpAddrs[0])
				fmt.Fprintf(w, "  POP3      %s\n", pop)
				fmt.Fprintf(w, "  metrics   http://%s/metrics\n", d.metricsListener.Addr())
				if password != "" {
					fmt.Fprintf(w, "  user      %s  password %s  (shown once; stored hashed in %s)\n", devUser, password, cfg.UserDB.PasswdFile)
				} else {
					fmt.Fprintf(w, "  user      %s  (password as printed on first run; delete %s to start afresh)\n", devUser, dir)
				}
				self, _ := os.Executable()
				if self == "" {
					self = "nfsdrop"
				}
				fmt.Fprintf(w, "\nSend a test message:\n  %s lmtp-send --server %s --to %s\n", self, tcp, devUser)
				fmt.Fprintf(w, "It lands in %s/example.test/demo/Maildir/new/\n", cfg.Store.MailRoot)
				fmt.Fprintf(w, "Fetch it over POP3:\n  curl -s pop3://%s/1 -u '%s:PASSWORD'\n\nCtrl-C stops.\n", pop, devUser)
			}
			return d.run(c.Context)
		},
	}
}

// setupDev creates dir with a config, passwd-file and mail root when they
// do not exist yet, and returns the new demo password ("" when dir was
// already set up).
func setupDev(dir, cfgPath string) (string, error) {
	if _, err := os.Stat(cfgPath); err == nil {
		return "", nil
	}
	mailRoot := filepath.Join(dir, "mail")
	if err := os.MkdirAll(mailRoot, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(mailRoot, ".nfsdrop-mounted"), []byte("marker: the mail root is mounted\n"), 0o600); err != nil {
		return "", err
	}
	var raw [10]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	password := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw[:]))
	hash, err := userdb.HashPassword("SHA512-CRYPT", password)
	if err != nil {
		return "", err
	}
	users := fmt.Sprintf("# Dovecot-format passwd-file: user:{SCHEME}hash:uid:gid:gecos:home:shell:extra\n%s:%s::::::userdb_quota_rule=*:storage=100M\n", devUser, hash)
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users), 0o600); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`# nfsdrop development configuration, made by "nfsdrop serve --dev".
# Every key is documented in docs/config.md.

[log]
format = "logfmt"
level = "info"

[store]
mail_root = %q
mount_marker = ".nfsdrop-mounted"

[userdb]
driver = "passwd-file"
passwd_file = "users"
default_domain = "example.test"

[lmtp]
# serve --dev also listens on a free loopback TCP port and prints it.
listen = ["unix:%s"]

[pop3]
# serve --dev listens on a free loopback port and prints it. Plaintext
# passwords are accepted from loopback only.
trusted_networks = ["127.0.0.0/8", "::1/128"]
`, mailRoot, filepath.Join(dir, "lmtp.sock"))
	return password, os.WriteFile(cfgPath, []byte(cfg), 0o600)
}
