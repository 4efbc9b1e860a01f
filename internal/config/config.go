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

	// LDAP configures the LDAP user source, used when userdb.driver is
	// "ldap". docs/ldap.md has settings for OpenLDAP and for Active
	// Directory. The recipient delimiter, default domain, Maildir name
	// and default quota of [userdb] apply to LDAP users as well.
	LDAP LDAP `toml:"ldap"`

	// LMTP configures the delivery server that Postfix hands messages to.
	LMTP LMTP `toml:"lmtp"`

	// Scan configures virus scanning with ClamAV's clamd, which is off
	// unless enabled is true.
	Scan Scan `toml:"scan"`

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
	// make nfsdrop write elsewhere. Each delivery and POP3 login resolves
	// the Maildir again beneath it and uses only what it resolved: a
	// symbolic link on the way is followed only when root (or the user
	// nfsdrop runs as) owns it and it stays inside mail_root, so a link a
	// user makes to another mailbox is refused (see store.md). Default "/var/mail/nfsdrop". Set it to
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

	// Volumes lists the file systems (NFS filers) mounted below mail_root
	// that hold Maildirs, each as a [[store.volumes]] table. Without any,
	// there is one volume named "default": mail_root itself, guarded by
	// mount_marker (the behaviour of a single filer). With volumes, each
	// mailbox lives on one of them: the one the user database names (a
	// mailbox path "NAME:rel/path", or an absolute path under a volume's
	// path), or, for a user whose entry names none, the one a hash of the
	// mailbox path picks among the volumes (the same on every machine; a
	// mailbox that already exists on a volume is found there). A volume
	// that is unmounted, failing or hung costs only its own users: their
	// mail is deferred while the others are served. See docs/nfs.md,
	// "Several filers". Default [], one volume at mail_root.
	Volumes []Volume `toml:"volumes"`

	// VolumeMaxCalls bounds the file system calls in flight on one volume
	// at once. A call on a hung hard-mounted filer never returns and holds
	// an operating system thread: the bound keeps a hung filer from
	// taking every thread (Go stops the program at 10000) and every
	// connection. Default 64, from 1 to 1000.
	VolumeMaxCalls int `toml:"volume_max_calls"`

	// VolumeCallWait is how long a file system call waits for one of the
	// volume_max_calls slots of its volume before it fails with a
	// temporary error (451 4.3.0, -ERR [SYS/TEMP]). Default "2s"; at
	// least "10ms".
	VolumeCallWait Duration `toml:"volume_call_wait"`

	// VolumeProbeInterval is how often the health of each volume is
	// probed (an lstat of its mount marker, or of its path when the
	// marker is off). Default "2s"; at least "100ms".
	VolumeProbeInterval Duration `toml:"volume_probe_interval"`

	// VolumeProbeTimeout is how long a health probe may take: a probe not
	// answered by then marks the volume down, and its users get temporary
	// errors at once until a probe answers again. It also bounds how long
	// a lookup (resolving the mailbox path, reading a link or a directory, at RCPT time or at
	// a POP3 login) waits for the filer before it is given up with a
	// temporary error: a hung filer then holds up a client for this long,
	// not until it answers again. Default "5s"; at least "100ms".
	VolumeProbeTimeout Duration `toml:"volume_probe_timeout"`
}

// Volume is one [[store.volumes]] table: a file system mounted below
// mail_root that holds Maildirs.
type Volume struct {
	// Name names the volume in the user database ("NAME:rel/path"), in
	// logs and as the volume label of metrics: a lower-case letter, then
	// up to 31 lower-case letters, digits, '_' or '-'. Unique. Required;
	// no default.
	Name string `toml:"name"`

	// Path is the absolute, clean path where the volume is mounted,
	// strictly below mail_root; no volume may lie inside another.
	// Required; no default.
	Path string `toml:"path"`

	// MountMarker is the name of a file, relative to path, that must exist
	// on the volume before nfsdrop uses it (see store.mount_marker).
	// Default "", which means store.mount_marker.
	MountMarker string `toml:"mount_marker"`

	// NewMailboxes says whether mailboxes the user database does not place
	// may be created on this volume. Set it to false for a full filer, or
	// one being emptied: its existing mailboxes are still served. At least
	// one volume must take new mailboxes. Default true.
	NewMailboxes bool `toml:"new_mailboxes"`
}

// UserDB is the [userdb] section.
type UserDB struct {
	// Driver is the source of users: "passwd-file", a file in Dovecot's
	// passwd-file format (passwd_file), or "ldap", a directory configured
	// in the [ldap] section. Default "passwd-file".
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
	// maildir:~/Maildir. For LDAP users without a mailbox attribute the
	// home directory is mail_root/DOMAIN/LOCAL.
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

// LDAP is the [ldap] section.
type LDAP struct {
	// URIs lists the LDAP servers, each "ldap://host[:port]" (port 389
	// unless given) or "ldaps://host[:port]" (TLS from the start, port
	// 636), without a DN or filter. They are tried in order: a server that
	// fails or does not answer within timeout is skipped for a while
	// (retry_backoff) and the next one is used. Default
	// ["ldap://localhost"].
	URIs []string `toml:"uris"`

	// StartTLS switches ldap:// connections to TLS with the StartTLS
	// operation before anything else is sent, and fails if the server
	// refuses. Default false. Certificates are checked against ca_file
	// and the host name of the URI; ldaps:// URIs always use TLS.
	StartTLS bool `toml:"start_tls"`

	// CAFile is the absolute path of a PEM file with the certificates of
	// the authorities that sign the servers' certificates, for ldaps:// and
	// start_tls. Default "", the system's trusted authorities.
	CAFile string `toml:"ca_file"`

	// BindDN is the DN of the account nfsdrop binds as to search for users,
	// such as "cn=nfsdrop,ou=services,dc=example,dc=org". Default "", which
	// searches anonymously. The account needs read access to the
	// attributes below (to attr_password only with auth_method
	// "compare").
	BindDN string `toml:"bind_dn"`

	// BindPasswordFile is the absolute path of a file holding the password
	// of bind_dn; one trailing newline is ignored. The password is never
	// given on the command line or logged; make the file readable by
	// nfsdrop only. It is read again for each new connection, so a changed
	// password needs no restart. Default "". Required with bind_dn.
	BindPasswordFile string `toml:"bind_password_file"`

	// BaseDN is where user searches start, such as
	// "ou=people,dc=example,dc=org". Default "". Required when
	// userdb.driver is "ldap".
	BaseDN string `toml:"base_dn"`

	// Scope is how deep below base_dn users are searched: "base" (base_dn
	// itself), "one" (its children) or "sub" (the whole subtree). Default
	// "sub".
	Scope string `toml:"scope"`

	// UserFilter is the search filter that finds the user of a recipient
	// address. In it %s stands for the address (local@domain, in lower
	// case, without the recipient delimiter's extension), %u for its local
	// part, %d for its domain and %% for a percent sign; every substituted
	// value is escaped (RFC 4515), so an address cannot change the
	// filter. An address with an extension (user+ext@domain) is first
	// searched whole, then without the extension. It must match one entry:
	// none means the user does not exist (550 5.1.1), more than one is a
	// configuration error (logged; the mail is deferred). Default
	// "(&(objectClass=inetOrgPerson)(|(mail=%s)(nfsdropAlias=%s)))",
	// which works without nfsdrop's schema too.
	UserFilter string `toml:"user_filter"`

	// AuthFilter is the search filter that finds the user of a POP3 login
	// name, with the placeholders of user_filter, for example
	// "(&(objectClass=inetOrgPerson)(uid=%u))" to log in with the uid.
	// Default "", the same as user_filter: users log in with their address
	// (the default_domain is added to a name without "@").
	AuthFilter string `toml:"auth_filter"`

	// AuthMethod is how a POP3 password is checked. "bind" binds to the
	// directory as the user's DN with the password, on connections kept
	// apart from the searching ones, and works with every directory,
	// Active Directory included. "compare" reads attr_password with
	// bind_dn's rights and checks it in nfsdrop, with the schemes of the
	// passwd-file ({SSHA}, {CRYPT}, {ARGON2ID}, ...; a value without
	// "{SCHEME}" is taken as crypt(3), never as clear text). Default "bind".
	// An empty password is always refused.
	AuthMethod string `toml:"auth_method"`

	// AttrAddress is the attribute holding the user's primary address. Its
	// first value names the user (in the logs and for the concurrency
	// limit) and, without attr_mailbox, the Maildir. An entry without it is
	// refused (550 5.2.0, logged). Default "mail".
	AttrAddress string `toml:"attr_address"`

	// AttrAliases is the attribute holding further addresses of the user.
	// Finding users by them is the job of user_filter, which must name the
	// attribute; nfsdrop also reads it to log, at debug level, which
	// addresses an entry has ("smtp:" prefixes, as in Active Directory's
	// proxyAddresses, removed). Default "nfsdropAlias". "" reads none.
	AttrAliases string `toml:"attr_aliases"`

	// AttrMailbox is the attribute holding the path of the user's Maildir:
	// absolute, or relative to store.mail_root; "maildir:PATH" (Dovecot's
	// notation) is accepted too. A path that leaves mail_root, by ".." or
	// through a symbolic link, is refused for that user (550 5.2.0,
	// logged). Without the attribute the Maildir is
	// mail_root/DOMAIN/LOCAL/userdb.maildir, from the primary address.
	// Default "nfsdropMailbox". "" reads none.
	AttrMailbox string `toml:"attr_mailbox"`

	// AttrQuotaStorage is the attribute holding the user's storage quota in
	// bytes (a K, M, G or T suffix is accepted); 0 means unlimited. Without
	// it, userdb.quota_storage applies. Default "nfsdropQuotaBytes". ""
	// reads none.
	AttrQuotaStorage string `toml:"attr_quota_storage"`

	// AttrQuotaMessages is the attribute holding the user's quota in number
	// of messages; 0 means unlimited. Without it, userdb.quota_messages
	// applies. Default "nfsdropQuotaMessages". "" reads none.
	AttrQuotaMessages string `toml:"attr_quota_messages"`

	// AttrUID is the attribute holding the numeric user id that owns the
	// Maildir when nfsdrop runs as root. Default "uidNumber" (posixAccount).
	// "" reads none.
	AttrUID string `toml:"attr_uid"`

	// AttrGID is the attribute holding the numeric group id of the Maildir.
	// Default "gidNumber". "" reads none.
	AttrGID string `toml:"attr_gid"`

	// AttrEnabled is the attribute that enables an account: an entry that
	// has it, with no value equal to enabled_value, receives no mail (550
	// 5.2.1) and cannot log in. An entry without it is enabled. Default
	// "nfsdropEnabled". "" reads none. To leave disabled accounts out
	// altogether (they are then unknown users), put the condition in
	// user_filter, as docs/ldap.md shows for Active Directory.
	AttrEnabled string `toml:"attr_enabled"`

	// EnabledValue is the value of attr_enabled that enables an account,
	// compared without regard to case. Default "TRUE", LDAP's boolean true.
	EnabledValue string `toml:"enabled_value"`

	// AttrPassword is the attribute holding the password hash, read only
	// with auth_method "compare". Default "userPassword".
	AttrPassword string `toml:"attr_password"`

	// Timeout bounds each step of the conversation with a server:
	// connecting (with TLS and the bind of bind_dn), a search, a user's
	// bind. A server that does not answer in time is skipped like one that
	// is down, so a lookup waits about this long per server that hangs.
	// Default "5s"; at least "100ms".
	Timeout Duration `toml:"timeout"`

	// PoolSize is the largest number of connections nfsdrop keeps open to
	// the directory for searches, per process; as many again are used for
	// user binds. Lookups beyond it wait for a free connection, within
	// timeout. Default 4; from 1 to 64.
	PoolSize int `toml:"pool_size"`

	// RetryBackoff is the longest a server that failed is left alone
	// before it is tried again. The pause starts at one second and doubles
	// with each failure in a row, up to this. While every server is in
	// its pause, lookups fail at once (and may use the cache, see
	// cache_max_stale). Default "30s"; at least "1s".
	RetryBackoff Duration `toml:"retry_backoff"`

	// CacheSize is the largest number of addresses whose lookup is kept in
	// memory, per process. Default 10000; 0 turns the cache off, and with
	// it the use of stale entries during an outage.
	CacheSize int `toml:"cache_size"`

	// CacheTTL is how long a user that was found is taken from the cache
	// instead of the directory: a change in the directory (a new quota, a
	// disabled account) takes up to this long to be seen. Default "1m".
	CacheTTL Duration `toml:"cache_ttl"`

	// NegativeCacheTTL is how long an address that was not found is
	// answered from the cache: mail to a user created in the directory in
	// the meantime is refused for up to this long. Default "10s"; "0s"
	// caches no unknown addresses.
	NegativeCacheTTL Duration `toml:"negative_cache_ttl"`

	// CacheMaxStale is how long after cache_ttl a user may still be taken
	// from the cache for a delivery when no server answers. nfsdrop logs a
	// warning each time it does so. Logins never use it. Default "1h";
	// "0s" defers every delivery while the directory is down.
	CacheMaxStale Duration `toml:"cache_max_stale"`

	// AuthCacheTTL is how long a successful POP3 login is remembered, by a
	// keyed hash of the password (never the password), so that the same
	// password is accepted again without asking the directory, even if it
	// is down; never for longer than this. A password changed or an
	// account disabled in the directory keeps working for up to this
	// long. Default "0s", no caching; at most "1h".
	AuthCacheTTL Duration `toml:"auth_cache_ttl"`
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
	// later. pop3d stops the same way: sessions waiting for a command end
	// at once, and a command in progress (a RETR, the deletions of a QUIT)
	// may go on this long, and pop3d then gives the sessions it closed up
	// to 5s to hand back their mailbox locks. Default "30s"; at least
	// "1s". Keep it at least 10s below systemd's TimeoutStopSec (45s in
	// the packaged units).
	ShutdownTimeout Duration `toml:"shutdown_timeout"`

	// CommitDeadline is how long after the end of a message's data it may
	// still be put into a recipient's mailbox. Postfix stops waiting for
	// the answer after lmtp_data_done_timeout (600s by default) and sends
	// the message again later; a delivery that completed after that (a
	// hung file server that answered again) would be a duplicate. A
	// recipient whose delivery is not done by then gets a temporary
	// failure instead, and nothing is left in the mailbox. It applies to
	// the deliver command too (Postfix's command_time_limit). Default
	// "5m"; at least "1s". Keep it well below lmtp_data_done_timeout.
	CommitDeadline Duration `toml:"commit_deadline"`
}

// Scan is the [scan] section.
type Scan struct {
	// Enabled turns virus scanning on. Every message, whether it comes
	// over LMTP or through the deliver command, is streamed to clamd
	// while it is written to the store, and nothing is put into a mailbox
	// before clamd has given its verdict; what a verdict leads to is set
	// by action, on_too_large and fail_open. Default false.
	Enabled bool `toml:"enabled"`

	// Clamd lists the addresses of clamd: "unix:/path" for its
	// LocalSocket, or "tcp:host:port" for its TCPSocket and TCPAddr (the
	// host is required). Each message goes to the first address that
	// accepts a connection; when one does not, the next is tried, and an
	// address that failed is tried after the others for a few seconds.
	// List several clamd hosts to keep scanning when one is down. Default
	// ["unix:/run/clamav/clamd.ctl"], the socket of Debian's
	// clamav-daemon. At least one address is required when enabled is
	// true. clamd has no authentication: a TCP address must be on
	// localhost or a trusted network.
	Clamd []string `toml:"clamd"`

	// Timeout bounds the scan of one message, from connecting to clamd to
	// its verdict (while the message is being received, it bounds each
	// wait for clamd instead). A scan that takes longer fails as if clamd
	// were unavailable (see fail_open). Default "30s"; at least "1s".
	// Keep it well below Postfix's lmtp_data_done_timeout (600s), which
	// is how long Postfix waits for the answer to a message.
	Timeout Duration `toml:"timeout"`

	// Action is what happens to a message in which clamd finds a virus.
	// "reject" refuses it for every recipient with 554 5.7.1 and the name
	// of the virus, and stores nothing; Postfix then returns it to its
	// sender, which for most viruses is a forged address. "quarantine"
	// accepts it, but stores it only in quarantine_maildir, where an
	// administrator can inspect it; the recipients never see it. "tag"
	// delivers it to the recipients with the header
	// "X-Virus-Status: Infected (NAME)", for their mail client or sieve
	// rules to act on. Each infected message is logged with the virus
	// name. Default "reject". Whatever the action, an X-Virus-Status
	// header that comes with a message is removed before it is stored,
	// so that a sender cannot forge a verdict: the only one a user sees
	// is nfsdrop's.
	Action string `toml:"action"`

	// QuarantineMaildir is the absolute path of the Maildir that infected
	// messages are stored in when action is "quarantine", with a header
	// naming the virus. It must be inside store.mail_root, so that the
	// mount check covers it. Required when action is "quarantine";
	// ignored otherwise. Default "".
	QuarantineMaildir string `toml:"quarantine_maildir"`

	// StreamMaxLength is clamd's StreamMaxLength, as set in clamd.conf:
	// the largest message clamd scans. A longer message is recognised
	// once that many bytes have been sent, without sending clamd the rest,
	// and on_too_large decides what happens to it. Default "25M", clamd's
	// own default. Keep it equal to clamd's setting: when it is larger,
	// clamd's own refusal ("size limit exceeded") has the same effect
	// after more bytes were sent; when it is smaller, messages in between
	// are treated as too large although clamd would scan them. "0" means
	// unknown, and only clamd's refusal counts. When enabled is true and
	// on_too_large is "tempfail", it must be at least
	// lmtp.max_message_size (raise clamd's StreamMaxLength to match),
	// because a larger message could never be delivered.
	StreamMaxLength ByteSize `toml:"stream_max_length"`

	// OnTooLarge is what happens to a message longer than
	// stream_max_length, which clamd does not scan. "tempfail" answers
	// with a temporary error, so Postfix keeps the message and tries
	// again until it gives up and returns the message to its sender.
	// "skip" delivers it unscanned, with the header
	// "X-Virus-Status: Unscanned (too large)", and logs a warning.
	// Default "tempfail".
	OnTooLarge string `toml:"on_too_large"`

	// FailOpen delivers messages unscanned while clamd is unavailable:
	// no address accepts a connection, clamd does not answer within
	// timeout, or it answers with an error. Each such message gets the
	// header "X-Virus-Status: Unscanned (scanner unavailable)" and a
	// warning in the log. Default false: those messages get a temporary
	// error (451), Postfix keeps them in its queue and tries again later,
	// and no message is stored unscanned. It does not apply to
	// messages that are too large (see on_too_large).
	FailOpen bool `toml:"fail_open"`
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

	// LoginTimeout is how long a session may stay without logging in: at
	// that deadline it is closed whatever it sends, so that connections
	// that never log in cannot hold session slots. Default "1m" (about
	// what Dovecot's login processes allow); at least "1s".
	LoginTimeout Duration `toml:"login_timeout"`

	// MaxSessions is the largest number of POP3 sessions served at once.
	// When they are all taken, a new connection takes the place of the
	// oldest session that has not logged in yet, which is closed (as
	// Dovecot does); only when every session is logged in is the new one
	// refused. Default 20000, for a front end of an ISP: an idle session
	// costs the server about 7 kB of memory plus its mailbox listing
	// (some 60 bytes a message) once logged in, and one file descriptor
	// (two while a message is being sent), within the packaged unit's
	// LimitNOFILE=65536. At least 1.
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
	// how long a crash keeps a user out. The age is judged on the file
	// server's clock, so clock skew between machines does not matter.
	// Default "5m"; at least "30s": the lock is refreshed every third of
	// this, and a file server that stalls for a few seconds must not make
	// a live lock look left behind.
	LockStale Duration `toml:"lock_stale"`

	// MoveToCur moves messages from new/ to cur/ when a POP3 session first
	// sees them, as IMAP servers do, so that an IMAP server used later does
	// not show them as new. Default false, which leaves new/ alone and
	// saves a rename per message on NFS.
	MoveToCur bool `toml:"move_to_cur"`

	// UIDLFormat says how the unique ids of UIDL are made. "maildir" uses
	// the unique part of the Maildir file name (before the ':'). "dovecot"
	// and "courier" give the ids those servers gave, so that clients of a
	// server being replaced do not download every message again: to the
	// messages in that server's list when nfsdrop first lists the Maildir
	// (recorded then in nfsdrop-uidls.dovecot or .courier), never to ones
	// the old server lists later, whose ids nfsdrop may already have shown
	// (docs/migration.md). Default "maildir".
	UIDLFormat string `toml:"uidl_format"`
}

// Metrics is the [metrics] section.
type Metrics struct {
	// Listen is the address of an HTTP listener that serves Prometheus
	// metrics on /metrics, in the syntax of lmtp.listen (for example
	// "tcp:127.0.0.1:9100"). Default "", no listener. It has no
	// authentication: keep it on localhost or a management network.
	// This is the listener of "nfsdrop lmtpd" (and of "serve --dev");
	// pop3d has its own, pop3_listen, since both daemons usually run on
	// the same machine.
	Listen string `toml:"listen"`

	// POP3Listen is the metrics listener of "nfsdrop pop3d", in the same
	// syntax as listen. Default "", no listener.
	POP3Listen string `toml:"pop3_listen"`
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
			MailRoot:    "/var/mail/nfsdrop",
			MountMarker: ".nfsdrop-mounted",

			VolumeMaxCalls:      64,
			VolumeCallWait:      Duration(2 * time.Second),
			VolumeProbeInterval: Duration(2 * time.Second),
			VolumeProbeTimeout:  Duration(5 * time.Second),
			QuotaAction:         "bounce",
			TmpMaxAge:           Duration(36 * time.Hour),
			EstaleRetries:       3,
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
		LDAP: LDAP{
			URIs:              []string{"ldap://localhost"},
			StartTLS:          false,
			CAFile:            "",
			BindDN:            "",
			BindPasswordFile:  "",
			BaseDN:            "",
			Scope:             "sub",
			UserFilter:        "(&(objectClass=inetOrgPerson)(|(mail=%s)(nfsdropAlias=%s)))",
			AuthFilter:        "",
			AuthMethod:        "bind",
			AttrAddress:       "mail",
			AttrAliases:       "nfsdropAlias",
			AttrMailbox:       "nfsdropMailbox",
			AttrQuotaStorage:  "nfsdropQuotaBytes",
			AttrQuotaMessages: "nfsdropQuotaMessages",
			AttrUID:           "uidNumber",
			AttrGID:           "gidNumber",
			AttrEnabled:       "nfsdropEnabled",
			EnabledValue:      "TRUE",
			AttrPassword:      "userPassword",
			Timeout:           Duration(5 * time.Second),
			PoolSize:          4,
			RetryBackoff:      Duration(30 * time.Second),
			CacheSize:         10000,
			CacheTTL:          Duration(time.Minute),
			NegativeCacheTTL:  Duration(10 * time.Second),
			CacheMaxStale:     Duration(time.Hour),
			AuthCacheTTL:      0,
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
			CommitDeadline:     Duration(5 * time.Minute),
		},
		Scan: Scan{
			Enabled:           false,
			Clamd:             []string{"unix:/run/clamav/clamd.ctl"},
			Timeout:           Duration(30 * time.Second),
			Action:            "reject",
			QuarantineMaildir: "",
			StreamMaxLength:   25 * MiB,
			OnTooLarge:        "tempfail",
			FailOpen:          false,
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
			LoginTimeout:    Duration(time.Minute),
			MaxSessions:     20000,
			MaxPerIP:        20,
			AuthFailDelay:   Duration(2 * time.Second),
			MaxAuthFailures: 3,
			LockStale:       Duration(5 * time.Minute),
			MoveToCur:       false,
			UIDLFormat:      "maildir",
		},
		Metrics: Metrics{
			Listen:     "",
			POP3Listen: "",
		},
	}
}
