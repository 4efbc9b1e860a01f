package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/postfix"
)

// Postfix is a private Postfix instance for the lab (the patterns of
// internal/testenv/postfix, without a testing.T): its own configuration,
// queue, data directory and mail log under the run directory. Its master
// runs in the foreground in the client namespace, where its smtpd listens
// on 127.0.0.1:SMTPPort for the load generator and its lmtp client reaches
// HAProxy at ClientAddr:24. It never touches /etc/postfix or another
// Postfix: every command gets the instance's configuration directory.
type Postfix struct {
	Dir, ConfigDir, QueueDir, DataDir string
	// LogFile is maillog_file: the record of every delivery.
	LogFile string
	// SMTPPort is smtpd's port on 127.0.0.1 inside the client namespace.
	SMTPPort int

	lab    *Lab
	master *Proc
}

// PostfixOptions configures StartPostfix.
type PostfixOptions struct {
	// Transport is virtual_transport, e.g. "lmtp:inet:[127.77.0.5]:24".
	Transport string
	// Domains are virtual_mailbox_domains (default lab.test).
	Domains []string
	// SMTPPort defaults to 25.
	SMTPPort int
	// Concurrency is lmtp_destination_concurrency_limit (default 10).
	Concurrency int
	// Extra main.cf lines, written last.
	Extra []string
}

// postfixNeeds are the programs StartPostfix uses.
var postfixNeeds = []string{"postfix", "postqueue", "/usr/lib/postfix/sbin/master"}

// StartPostfix makes and starts a private Postfix in the client
// namespace. The lab stops it by PID (Close), or call Stop.
func (l *Lab) StartPostfix(ctx context.Context, o PostfixOptions) (*Postfix, error) {
	for _, p := range postfixNeeds {
		if _, err := lookPath(p); err != nil {
			return nil, &MissingError{Packages: []string{"postfix"}}
		}
	}
	if len(o.Domains) == 0 {
		o.Domains = []string{"lab.test"}
	}
	if o.SMTPPort == 0 {
		o.SMTPPort = 25
	}
	if o.Concurrency == 0 {
		o.Concurrency = 10
	}
	dir := filepath.Join(l.Dir, "postfix")
	p := &Postfix{
		Dir: dir, ConfigDir: filepath.Join(dir, "etc"), QueueDir: filepath.Join(dir, "queue"),
		DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(l.LogDir(), "maillog"),
		SMTPPort: o.SMTPPort, lab: l,
	}
	if err := os.MkdirAll(p.ConfigDir, 0o755); err != nil {
		return nil, err
	}
	// Postfix's daemons (mail_owner) must reach the queue: every directory
	// on the way must be searchable.
	for d := dir; d != "/" && strings.HasPrefix(d, l.Dir); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	main := []string{
		"# Private lab instance made by contrib/lab (postfix.go).",
		"compatibility_level = 3.6",
		"queue_directory = " + p.QueueDir,
		"data_directory = " + p.DataDir,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = postfix.lab.test",
		"mydomain = lab.test",
		"myorigin = $myhostname",
		"mydestination =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"maillog_file = " + p.LogFile,
		"maillog_file_prefixes = " + l.Dir,
		"alias_maps =",
		"alias_database =",
		"local_recipient_maps =",
		"biff = no",
		"virtual_mailbox_domains = " + strings.Join(o.Domains, ", "),
		// nfsdrop decides who exists (550 5.1.1 at RCPT).
		"virtual_mailbox_maps =",
		"smtpd_reject_unlisted_recipient = no",
		"virtual_transport = " + o.Transport,
		"lmtp_destination_concurrency_limit = " + strconv.Itoa(o.Concurrency),
		"lmtp_destination_recipient_limit = 1",
		// A VM that dies mid-transaction must not hold a message for the
		// default 10 minutes; HAProxy's timeouts are longer than a filer
		// restart, Postfix's longer than HAProxy's.
		"lmtp_connect_timeout = 10s",
		"lmtp_data_done_timeout = 60s",
		"lmtp_data_xfer_timeout = 60s",
		"lmtp_rcpt_timeout = 60s",
		"lmtp_mail_timeout = 60s",
		"lmtp_lhlo_timeout = 60s",
		"default_transport = error:outside mail is disabled in the lab",
		"relay_transport = error:outside mail is disabled in the lab",
		"notify_classes =",
		"smtputf8_enable = no",
		"smtpd_banner = $myhostname ESMTP lab",
		"smtpd_client_connection_count_limit = 0",
		"smtpd_client_connection_rate_limit = 0",
		"smtpd_client_message_rate_limit = 0",
		"in_flow_delay = 0",
		"queue_run_delay = 2s",
		"minimal_backoff_time = 2s",
		"maximal_backoff_time = 4s",
		"delay_warning_time = 0",
		"maximal_queue_lifetime = 1d",
	}
	main = append(main, o.Extra...)
	if err := os.WriteFile(filepath.Join(p.ConfigDir, "main.cf"), []byte(strings.Join(main, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.ConfigDir, "master.cf"), []byte(strings.Replace(labMasterCF, "{{SMTP}}", "127.0.0.1:"+strconv.Itoa(o.SMTPPort), 1)), 0o644); err != nil {
		return nil, err
	}
	if err := postfix.MakeQueue(p.QueueDir, p.DataDir); err != nil {
		return nil, fmt.Errorf("lab: postfix queue: %w", err)
	}
	// The master in the foreground (-d), in the client namespace; ip netns
	// exec execs it, so the lab's PID is the master's, and SIGTERM makes
	// it stop its children.
	proc, err := l.start("postfix-master", filepath.Join(l.LogDir(), "postfix-master.out"),
		"ip", "netns", "exec", l.Net.Client, "env", "MAIL_CONFIG="+p.ConfigDir,
		"/usr/lib/postfix/sbin/master", "-c", p.ConfigDir, "-d")
	if err != nil {
		return nil, err
	}
	proc.group = true
	p.master = proc
	addr := "127.0.0.1:" + strconv.Itoa(p.SMTPPort)
	if err := waitFor(ctx, 30*time.Second, func() bool {
		c, err := l.Net.Dial(ctx, l.Net.Client, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, proc.Exited); err != nil {
		b, _ := os.ReadFile(p.LogFile)
		o, _ := os.ReadFile(proc.Log)
		return nil, fmt.Errorf("lab: postfix smtpd not answering on %s: %v\n%s\n%s", addr, err, tail(b, 2000), tail(o, 1000))
	}
	l.logf("postfix: master pid %d, smtpd %s in %s, virtual_transport %s", proc.Pid(), addr, l.Net.Client, o.Transport)
	return p, nil
}

// Stop stops the master (SIGTERM, which stops its children; SIGKILL to its
// process group after 10 s).
func (p *Postfix) Stop() error {
	if p.master == nil {
		return nil
	}
	err := p.master.Stop(10 * time.Second)
	// The master leads its own process group: nothing of it may survive.
	if pid := p.master.Pid(); pid > 0 {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	return err
}

// command runs a Postfix command line program on the host (sendmail,
// postqueue reach the instance through its queue directory's sockets).
func (p *Postfix) command(ctx context.Context, name string, args ...string) (string, error) {
	path, err := lookPath(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "MAIL_CONFIG="+p.ConfigDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Flush asks the queue manager to retry deferred mail now.
func (p *Postfix) Flush(ctx context.Context) error {
	out, err := p.command(ctx, "postqueue", "-c", p.ConfigDir, "-f")
	if err != nil {
		return fmt.Errorf("postqueue -f: %v: %s", err, out)
	}
	return nil
}

// QueueSize counts the messages in the queue (incoming, active, deferred,
// maildrop, hold), from the queue directory itself.
func (p *Postfix) QueueSize() int {
	n := 0
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		filepath.WalkDir(filepath.Join(p.QueueDir, q), func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
	}
	return n
}

// labMasterCF is internal/testenv/postfix's master.cf with an smtpd
// listener (at {{SMTP}}) for the load generator.
var labMasterCF = strings.Replace(postfix.MasterCF, "\npickup ",
	"\n{{SMTP}}      inet  n       -       n       -       20      smtpd\npickup ", 1)
