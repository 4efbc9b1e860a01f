// Package config reads nfsdrop's configuration: one TOML file, decoded
// strictly over the defaults returned by Default.
//
// Unknown keys are errors, not warnings, so that a misspelt key cannot leave a
// default silently in force. Every error names the file, the line and the
// key. The doc comment of each field below is the reference documentation:
// docs/config.md is generated from this file by gendoc, and a test fails when
// the two disagree.
package config

//go:generate go run ./gendoc -o ../../docs/config.md

import "time"

// Config is the whole configuration file. The zero value is not useful: start
// from Default, or use Load or Parse.
type Config struct {
	// Hostname names this machine in the unique file names of delivered
	// messages (the host part of "time.unique.host" in new/) and in the
	// Received: header added to each message. The default, "", means the
	// operating system's host name, read at start. Set it when several
	// delivery hosts share one NFS store and their host names are not
	// unique, because two hosts with the same name could create the same
	// file name. It must not contain '/', ':', ',' or white space (Maildir
	// gives ':' and ',' a meaning in file names) and is at most 255 bytes.
	Hostname string `toml:"hostname"`

	// Log configures logging.
	Log Log `toml:"log"`

	// Store configures the Maildir store on NFS that messages are delivered
	// to and that POP3 reads from.
	Store Store `toml:"store"`

	// UserDB configures where users, their mailboxes and their quotas come
	// from.
	UserDB UserDB `toml:"userdb"`

	// LMTP configures the delivery server that Postfix hands messages to.
	LMTP LMTP `toml:"lmtp"`

	// POP3 configures the POP3 server, which is off unless listen or
	// listen_tls is set.
	POP3 POP3 `toml:"pop3"`

	// Metrics configures the Prometheus metrics endpoint.
	Metrics Metrics `toml:"metrics"`

	// src records where the values came from (file, lines); nil for a
	// Config that was not read from a file.
	src *source
}

// Log is the [log] section.
type Log struct {
	// Format is the format of the log lines: "logfmt" (key=value pairs, easy to read and
	// to grep) or "json" (one object per line, for log collectors that
	// parse JSON). Default "logfmt".
	Format string `toml:"format"`

	// Level is the least severe level that is logged: "debug", "info",
	// "warn" or "error". Default "info". Use "debug" to troubleshoot a
	// problem (it is verbose), "warn" to log only what needs attention.
	Level string `toml:"level"`
}

// Store is the [store] section.
type Store struct {
	// MailRoot is the absolute path of the directory that all Maildirs live
	// under, normally an NFS mount. A mailbox path from the user database
	// that resolves outside it is refused, so a broken user entry cannot
	// make nfsdrop write elsewhere. Default "/var/mail/nfsdrop". Set it to
	// where the mail store is mounted. Directories nfsdrop creates are
	// always mode 0700; there is no key for that.
	MailRoot string `toml:"mail_root"`

	// MountMarker is the name of a file, relative to mail_root, that must
	// exist before nfsdrop delivers a message or opens a mailbox. Create it
	// on the NFS export itself, not in the local directory under the mount
	// point: when the mount is missing the marker is missing too, and
	// nfsdrop answers with a temporary error (Postfix keeps the mail)
	// instead of delivering into the empty local directory, where no one
	// would ever see it. Default ".nfsdrop-mounted". Set it to "" to turn
	// the check off, for example when mail_root is a local file system.
	MountMarker string `toml:"mount_marker"`

	// QuotaAction is what happens to a message for a user who is over
	// quota. "bounce" refuses it with 552 5.2.2, so the sender learns at
	// once that it was not delivered. "defer" answers 452 4.2.2, so Postfix
	// keeps the message in its queue and retries until the user makes room
	// or the message is older than Postfix's maximal_queue_lifetime.
	// Default "bounce".
	QuotaAction string `toml:"quota_action"`

	// TmpMaxAge is the age after which a file left in a Maildir's tmp/
	// directory, by a delivery that was interrupted, is deleted. Default
	// "36h", the value the Maildir specification suggests; at least "1h",
	// so that a slow delivery still writing is never removed.
	TmpMaxAge Duration `toml:"tmp_max_age"`

	// EstaleRetries is how many times an operation that fails with ESTALE
	// (a stale NFS file handle: another client replaced or removed the
	// file or directory) is retried with a fresh lookup before it fails with
	// a temporary error. Default 3, from 0 (no retry) to 10. Raise it if
	// the logs show ESTALE failures on a busy store shared by many hosts.
	EstaleRetries int `toml:"estale_retries"`
}

// UserDB is the [userdb] section.
type UserDB struct {
	// Driver is the source of users. Only "passwd-file" is supported now;
	// "ldap" is reserved for a later version and refused. Default
	// "passwd-file".
	Driver string `toml:"driver"`

	// PasswdFile is the user file read by the passwd-file driver. A relative
	// path is relative to the directory of the configuration file, not to
	// the working directory, so a configuration and its user file can be
	// kept together. Default "/etc/nfsdrop/users".
	PasswdFile string `toml:"passwd_file"`

	// Maildir is the path of the Maildir inside each user's home directory.
	// It must be relative and stay inside the home directory; "." means
	// that the home directory is itself the Maildir. Default "Maildir", the
	// layout of Postfix's home_mailbox = Maildir/ and of Dovecot's
	// maildir:~/Maildir.
	Maildir string `toml:"maildir"`

	// RecipientDelimiter holds the characters that separate a user name from
	// an address extension, like Postfix's recipient_delimiter: with "+",
	// mail to user+lists@example.org goes to user. Several characters may
	// be given ("+-"); each of them is a delimiter. "" turns extensions
	// off. Default "+". Keep it equal to Postfix's setting.
	RecipientDelimiter string `toml:"recipient_delimiter"`

	// DefaultDomain is the domain added to a recipient address or POP3 login
	// name that has no "@domain". Default "", which adds nothing.
	DefaultDomain string `toml:"default_domain"`

	// QuotaStorage is the storage quota, as a size, of users whose entry in
	// the user database sets none. Default 0, unlimited.
	QuotaStorage ByteSize `toml:"quota_storage"`

	// QuotaMessages is the quota in number of messages of users whose entry
	// in the user database sets none. Default 0, unlimited.
	QuotaMessages int64 `toml:"quota_messages"`
}

// LMTP is the [lmtp] section.
type LMTP struct {
	// Listen lists the addresses the LMTP server listens on, each either
	// "unix:/path" for a Unix socket (as in Postfix's
	// "lmtp:unix:/run/nfsdrop/lmtp" transport) or "tcp:host:port", which
	// may also be written "host:port" ("[::1]:24" for IPv6, ":24" for every
	// address). An address may appear only once. Default
	// ["unix:/run/nfsdrop/lmtp"]. LMTP has no authentication: do not
	// listen where anything other than Postfix can connect.
	Listen []string `toml:"listen"`

	// MaxMessageSize is the largest message accepted, as a size. It is
	// announced in the SIZE extension, so Postfix does not even try to
	// send a bigger message. Default "50M"; at least 1 byte. Keep it at least as large as
	// Postfix's message_size_limit, or Postfix accepts messages that it
	// then cannot deliver.
	MaxMessageSize ByteSize `toml:"max_message_size"`

	// MaxRecipients is the largest number of recipients in one transaction;
	// further RCPT TO commands get a temporary error, and Postfix sends
	// those recipients in another transaction. Default 100; at least 1.
	// Postfix's
	// lmtp_destination_recipient_limit should not be higher.
	MaxRecipients int `toml:"max_recipients"`

	// MaxUserConcurrency limits how many deliveries into one mailbox may run
	// at the same time, so that a flood of mail to one user cannot occupy
	// every connection and hammer one NFS directory; a delivery over the
	// limit gets a temporary error and Postfix retries it. Default 10; 0
	// means unlimited.
	MaxUserConcurrency int `toml:"max_user_concurrency"`

	// MaxConnections is the largest number of LMTP connections served at
	// once. Default 200; at least 1. Keep it above the number of connections Postfix
	// opens (its lmtp_destination_concurrency_limit, summed over the Postfix
	// hosts that deliver here).
	MaxConnections int `toml:"max_connections"`

	// MaxLineLength is the longest command or message line accepted, in
	// bytes. Default 4000; at least 1000, the line length RFC 5321 requires
	// every server to accept.
	MaxLineLength int `toml:"max_line_length"`

	// ReadTimeout is how long the server waits for the next command or the
	// next part of a message before it closes the connection. Default
	// "10m"; at least "1s".
	ReadTimeout Duration `toml:"read_timeout"`

	// WriteTimeout is how long writing a reply may take before the server
	// closes the connection. Default "10m"; at least "1s".
	WriteTimeout Duration `toml:"write_timeout"`

	// DeliveredTo says when a Delivered-To: header is added. "single" adds
	// it only when a transaction has one recipient, so a message for
	// several recipients is written once and hard-linked into each Maildir,
	// which saves NFS space and time. "always" gives every recipient a copy
	// of its own with its own Delivered-To:, which shows each user the
	// address the message came in for. Default "single".
	DeliveredTo string `toml:"delivered_to"`

	// ShutdownTimeout is how long transactions in progress may go on after
	// nfsdrop is told to stop; then their connections are closed and
	// Postfix, which has not had a reply, delivers those messages again
	// later. Default "30s"; at least "1s". Keep it below systemd's
	// TimeoutStopSec.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// POP3 is the [pop3] section.
type POP3 struct {
	// Listen lists the addresses of POP3 listeners without TLS (port 110),
	// in the syntax of lmtp.listen. Default [], none. Clients can switch
	// to TLS there with STLS when stls is true.
	Listen []string `toml:"listen"`

	// ListenTLS lists the addresses of POP3S listeners, where TLS starts
	// as soon as the client connects (port 995), in the syntax of
	// lmtp.listen. Default [], none. Requires tls_cert and tls_key.
	ListenTLS []string `toml:"listen_tls"`

	// TLSCert is the absolute path of a PEM file holding the server
	// certificate followed by its intermediate certificates. Required when
	// listen_tls is set or stls is true. Default "".
	TLSCert string `toml:"tls_cert"`

	// TLSKey is the absolute path of the PEM file holding the private key of
	// tls_cert. Required with tls_cert. Default "".
	TLSKey string `toml:"tls_key"`

	// STLS offers the STLS command (RFC 2595) on the listen listeners, so a
	// client can switch to TLS before it logs in. Default false; true
	// requires tls_cert and tls_key.
	STLS bool `toml:"stls"`

	// AllowPlaintext lets clients log in with a password on a connection
	// that is not encrypted, from any address. Default false: passwords
	// are accepted only over TLS (listen_tls, or after STLS) or from
	// trusted_networks. Set it only where no one can read the network.
	AllowPlaintext bool `toml:"allow_plaintext"`

	// TrustedNetworks lists client networks in CIDR notation
	// ("192.0.2.0/24", "2001:db8::/32"; a bare address is that one host)
	// from which logging in without TLS is allowed, such as a webmail
	// server next door. Default [], none.
	TrustedNetworks []string `toml:"trusted_networks"`

	// ProxyNetworks lists the networks, in CIDR notation, of load balancers
	// (HAProxy, nginx) allowed to send a PROXY protocol header; for their
	// connections the client address in the header is the one that counts,
	// for the logs, max_per_ip and trusted_networks. Default [], PROXY
	// protocol off.
	ProxyNetworks []string `toml:"proxy_networks"`

	// IdleTimeout is how long a session may stay idle before the server
	// closes it. Default "10m", which is also the minimum, because RFC 1939
	// requires an inactivity timer of at least 10 minutes.
	IdleTimeout Duration `toml:"idle_timeout"`

	// MaxSessions is the largest number of POP3 sessions served at once.
	// Default 1000; at least 1.
	MaxSessions int `toml:"max_sessions"`

	// MaxPerIP is the largest number of sessions at once from one client
	// address. Default 20; at least 1. Raise it when many users share one address
	// behind NAT.
	MaxPerIP int `toml:"max_per_ip"`

	// AuthFailDelay is the pause before the reply to a failed login, which
	// slows down password guessing. Default "2s"; "0s" means no pause.
	AuthFailDelay Duration `toml:"auth_fail_delay"`

	// MaxAuthFailures is the number of failed logins after which a session
	// is closed. Default 3; at least 1.
	MaxAuthFailures int `toml:"max_auth_failures"`

	// LockStale is the age after which a mailbox lock, which a POP3 session
	// holds on its Maildir (RFC 1939 requires exclusive access), counts as
	// left behind by a crashed server or a host that lost the NFS mount,
	// and is broken. A live session keeps its lock fresh, so this bounds
	// how long a crash keeps a user out. Default "5m"; at least "30s",
	// because NFS attribute caching delays the lock's time stamp.
	LockStale Duration `toml:"lock_stale"`

	// MoveToCur moves messages from new/ to cur/ when a POP3 session first
	// sees them, as IMAP servers do, so that an IMAP server used later does
	// not show them as new. Default false, which leaves new/ alone and
	// saves a rename per message on NFS.
	MoveToCur bool `toml:"move_to_cur"`

	// UIDLFormat says how the unique ids of UIDL are made. "maildir" uses
	// the unique part of the Maildir file name (before the ':'). "dovecot"
	// and "courier" give the ids those servers gave, so that clients of a
	// server being replaced do not download every message again. Default
	// "maildir".
	UIDLFormat string `toml:"uidl_format"`
}

// Metrics is the [metrics] section.
type Metrics struct {
	// Listen is the address of an HTTP listener that serves Prometheus
	// metrics on /metrics, in the syntax of lmtp.listen (for example
	// "tcp:127.0.0.1:9100"). Default "", no listener. It has no
	// authentication: keep it on localhost or a management network.
	Listen string `toml:"listen"`
}

// Default returns the configuration used for every key that the file does
// not set. This is the one place where defaults are defined; docs/config.md
// is generated from it.
func Default() Config {
	return Config{
		Hostname: "",
		Log: Log{
			Format: "logfmt",
			Level:  "info",
		},
		Store: Store{
			MailRoot:      "/var/mail/nfsdrop",
			MountMarker:   ".nfsdrop-mounted",
			QuotaAction:   "bounce",
			TmpMaxAge:     Duration(36 * time.Hour),
			EstaleRetries: 3,
		},
		UserDB: UserDB{
			Driver:             "passwd-file",
			PasswdFile:         "/etc/nfsdrop/users",
			Maildir:            "Maildir",
			RecipientDelimiter: "+",
			DefaultDomain:      "",
			QuotaStorage:       0,
			QuotaMessages:      0,
		},
		LMTP: LMTP{
			Listen:             []string{"unix:/run/nfsdrop/lmtp"},
			MaxMessageSize:     50 * MiB,
			MaxRecipients:      100,
			MaxUserConcurrency: 10,
			MaxConnections:     200,
			MaxLineLength:      4000,
			ReadTimeout:        Duration(10 * time.Minute),
			WriteTimeout:       Duration(10 * time.Minute),
			DeliveredTo:        "single",
			ShutdownTimeout:    Duration(30 * time.Second),
		},
		POP3: POP3{
			Listen:          []string{},
			ListenTLS:       []string{},
			TLSCert:         "",
			TLSKey:          "",
			STLS:            false,
			AllowPlaintext:  false,
			TrustedNetworks: []string{},
			ProxyNetworks:   []string{},
			IdleTimeout:     Duration(10 * time.Minute),
			MaxSessions:     1000,
			MaxPerIP:        20,
			AuthFailDelay:   Duration(2 * time.Second),
			MaxAuthFailures: 3,
			LockStale:       Duration(5 * time.Minute),
			MoveToCur:       false,
			UIDLFormat:      "maildir",
		},
		Metrics: Metrics{
			Listen: "",
		},
	}
}
