package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 256)
	longSock := "/" + strings.Repeat("s", 107)
	for _, tt := range []struct {
		name string
		data []byte
		want []string // substrings, one per error, in order; none: valid
	}{
		{"defaults", nil, nil},
		{"hostname ok", doc(`hostname = "mx1.example.org"`), nil},
		{"hostname slash", doc(`hostname = "mx/1"`), []string{`x.toml:1: key hostname: "mx/1" must not contain '/', ':', ','`}},
		{"hostname colon", doc(`hostname = "mx:1"`), []string{`x.toml:1: key hostname:`}},
		{"hostname comma", doc(`hostname = "mx,1"`), []string{`x.toml:1: key hostname:`}},
		{"hostname space", doc(`hostname = "mx 1"`), []string{`x.toml:1: key hostname:`}},
		{"hostname tab", doc(`hostname = "mx\t1"`), []string{`x.toml:1: key hostname:`}},
		{"hostname long", doc(`hostname = "` + long + `"`), []string{`x.toml:1: key hostname: must be at most 255 bytes, got 256`}},

		{"log format", doc("[log]", `format = "text"`), []string{`x.toml:2: key log.format: must be "logfmt" or "json", got "text"`}},
		{"log json", doc("[log]", `format = "json"`, `level = "debug"`), nil},
		{"log level", doc("[log]", `level = "trace"`), []string{`x.toml:2: key log.level: must be "debug", "info", "warn" or "error", got "trace"`}},

		{"mail_root empty", doc("[store]", `mail_root = ""`), []string{`x.toml:2: key store.mail_root: must be set`}},
		{"mail_root relative", doc("[store]", `mail_root = "var/mail"`), []string{`x.toml:2: key store.mail_root: "var/mail" must be an absolute path`}},
		{"mail_root unclean", doc("[store]", `mail_root = "/srv/mail/"`), []string{`x.toml:2: key store.mail_root: "/srv/mail/" must be a clean path (did you mean "/srv/mail"?)`}},
		{"mount_marker off", doc("[store]", `mount_marker = ""`), nil},
		{"mount_marker subdir", doc("[store]", `mount_marker = "sub/marker"`), nil},
		{"mount_marker absolute", doc("[store]", `mount_marker = "/marker"`), []string{`x.toml:2: key store.mount_marker: "/marker" must be a file name relative to store.mail_root`}},
		{"mount_marker dotdot", doc("[store]", `mount_marker = "../marker"`), []string{`x.toml:2: key store.mount_marker:`}},
		{"mount_marker dot", doc("[store]", `mount_marker = "."`), []string{`x.toml:2: key store.mount_marker:`}},
		{"quota_action defer", doc("[store]", `quota_action = "defer"`), nil},
		{"quota_action bad", doc("[store]", `quota_action = "drop"`), []string{`x.toml:2: key store.quota_action: must be "bounce" or "defer", got "drop"`}},
		{"tmp_max_age min", doc("[store]", `tmp_max_age = "1h"`), nil},
		{"tmp_max_age short", doc("[store]", `tmp_max_age = "59m"`), []string{`x.toml:2: key store.tmp_max_age: must be at least "1h", got "59m"`}},
		{"estale_retries bounds", doc("[store]", `estale_retries = 0`), nil},
		{"estale_retries max", doc("[store]", `estale_retries = 10`), nil},
		{"estale_retries high", doc("[store]", `estale_retries = 11`), []string{`x.toml:2: key store.estale_retries: must be between 0 and 10, got 11`}},
		{"estale_retries negative", doc("[store]", `estale_retries = -1`), []string{`x.toml:2: key store.estale_retries: must be between 0 and 10, got -1`}},

		{"volumes ok", doc("[store]", `mail_root = "/srv/mail"`, `volume_max_calls = 8`, `volume_call_wait = "500ms"`,
			"[[store.volumes]]", `name = "filer1"`, `path = "/srv/mail/f1"`,
			"[[store.volumes]]", `name = "filer-2"`, `path = "/srv/mail/f2"`, `mount_marker = "m"`, `new_mailboxes = false`), nil},
		{"volume name bad", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "Filer1"`, `path = "/srv/mail/f1"`),
			[]string{`x.toml:4: key store.volumes.name (table 1): "Filer1" must be a lower-case letter`}},
		{"volume name missing", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `path = "/srv/mail/f1"`),
			[]string{`x.toml:3: key store.volumes.name (table 1): must be set`}},
		{"volume name duplicate", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f1"`,
			"[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f2"`),
			[]string{`x.toml:7: key store.volumes.name (table 2): "a" is also the name of volume 1`}},
		{"volume path outside", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/other"`),
			[]string{`x.toml:5: key store.volumes.path (table 1): "/srv/other" must be below store.mail_root "/srv/mail"`}},
		{"volume path root", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail"`),
			[]string{`key store.volumes.path (table 1): "/srv/mail" must be below store.mail_root`}},
		{"volume path relative", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "f1"`),
			[]string{`x.toml:5: key store.volumes.path (table 1): "f1" must be an absolute path`}},
		{"volume path unclean", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f1/"`),
			[]string{`key store.volumes.path (table 1): "/srv/mail/f1/" must be a clean path`}},
		{"volume nested", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f1"`,
			"[[store.volumes]]", `name = "b"`, `path = "/srv/mail/f1/x"`),
			[]string{`x.toml:8: key store.volumes.path (table 2): "/srv/mail/f1/x" overlaps the path "/srv/mail/f1" of volume 1`}},
		{"volume marker", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f1"`, `mount_marker = "../m"`),
			[]string{`x.toml:6: key store.volumes.mount_marker (table 1): "../m" must be a file name relative to the volume's path`}},
		{"volumes none new", doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/f1"`, `new_mailboxes = false`),
			[]string{`key store.volumes: at least one volume must have new_mailboxes = true`}},
		{"volume unknown key", doc("[store]", "[[store.volumes]]", `name = "a"`, `nmae = "b"`),
			[]string{`x.toml:4: key store.volumes.nmae (table 1): unknown key "store.volumes.nmae"`}},
		{"volume wrong type", doc("[store]", "[[store.volumes]]", `name = "a"`, "[[store.volumes]]", `name = 2`),
			[]string{`x.toml:5: key store.volumes.name (table 2): expected a string, got integer 2`}},
		{"volumes not tables", doc("[store]", `volumes = "a"`), []string{`x.toml:2: key store.volumes: expected an array of tables`}},
		{"volume_max_calls", doc("[store]", `volume_max_calls = 0`), []string{`x.toml:2: key store.volume_max_calls: must be between 1 and 1000, got 0`}},
		{"volume_call_wait", doc("[store]", `volume_call_wait = "1ms"`), []string{`x.toml:2: key store.volume_call_wait: must be at least "10ms"`}},
		{"volume_probe_interval", doc("[store]", `volume_probe_interval = "1ms"`), []string{`x.toml:2: key store.volume_probe_interval: must be at least "100ms"`}},
		{"volume_probe_timeout", doc("[store]", `volume_probe_timeout = "1ms"`), []string{`x.toml:2: key store.volume_probe_timeout: must be at least "100ms"`}},

		{"driver ldap without base", doc("[userdb]", `driver = "ldap"`), []string{`x.toml: key ldap.base_dn (default): must be set when userdb.driver is "ldap"`}},
		{"ldap ok", ldapDoc(`uris = ["ldaps://dc1.example.org", "ldap://[::1]:3389/"]`, `bind_dn = "cn=x"`, `bind_password_file = "/etc/nfsdrop/ldap.pw"`,
			`auth_filter = "(uid=%u)"`, `auth_method = "compare"`, `attr_mailbox = ""`, `attr_uid = "1.2.3"`, `timeout = "100ms"`, `cache_size = 0`), nil},
		{"ldap ignored for passwd-file", doc("[ldap]", `uris = []`, `scope = "tree"`), nil},
		{"ldap no uris", ldapDoc(`uris = []`), []string{`x.toml:5: key ldap.uris: must list at least one server`}},
		{"ldap bad uris", ldapDoc(`uris = ["http://x", "ldap://", "ldap://x/dc=example", "ldap://x:99999"]`), []string{
			`"http://x" is not "ldap://host[:port]"`, `"ldap://" has no host`, `"ldap://x/dc=example": give only the scheme`, `"ldap://x:99999": the port must be`}},
		{"ldap relative files", ldapDoc(`ca_file = "ca.pem"`, `bind_dn = "cn=x"`, `bind_password_file = "pw"`), []string{
			`x.toml:5: key ldap.ca_file: "ca.pem" must be an absolute path`, `x.toml:7: key ldap.bind_password_file: "pw" must be an absolute path`}},
		{"ldap bind_dn alone", ldapDoc(`bind_dn = "cn=x"`), []string{`key ldap.bind_password_file (default): must be set when ldap.bind_dn is set`}},
		{"ldap password file alone", ldapDoc(`bind_password_file = "/pw"`), []string{`key ldap.bind_dn (default): must be set when ldap.bind_password_file is set`}},
		{"ldap scope", ldapDoc(`scope = "tree"`), []string{`x.toml:5: key ldap.scope: must be "base", "one" or "sub", got "tree"`}},
		{"ldap filters", ldapDoc(`user_filter = "mail=%s"`, `auth_filter = "(uid=bob)"`), []string{
			`x.toml:5: key ldap.user_filter: "mail=%s" must be an LDAP filter in parentheses`, `x.toml:6: key ldap.auth_filter: "(uid=bob)" must contain %s or %u`}},
		{"ldap filter placeholder", ldapDoc(`user_filter = "(mail=%x)"`), []string{`unknown placeholder %x`}},
		{"ldap filter parens", ldapDoc(`user_filter = "(mail=%s))(x=y)"`), []string{`unbalanced parentheses`}},
		{"ldap filter percent", ldapDoc(`user_filter = "(|(mail=%s)(x=100%%))"`), nil},
		{"ldap filter grammar", ldapDoc(`user_filter = "(mail=%s)(x=y)"`, `auth_filter = "(&(uid=%u)(!x))"`), []string{
			`x.toml:5: key ldap.user_filter: "(mail=%s)(x=y)" is not a valid LDAP filter`, `x.toml:6: key ldap.auth_filter: "(&(uid=%u)(!x))" is not a valid LDAP filter`}},
		{"ldap dns", doc("[userdb]", `driver = "ldap"`, "[ldap]", `base_dn = "example.org"`, `bind_dn = "cn"`, `bind_password_file = "/pw"`), []string{
			`x.toml:4: key ldap.base_dn: "example.org" is not a DN`, `x.toml:5: key ldap.bind_dn: "cn" is not a DN`}},
		{"ldap auth_method", ldapDoc(`auth_method = "sasl"`), []string{`key ldap.auth_method: must be "bind" or "compare", got "sasl"`}},
		{"ldap compare without attr", ldapDoc(`auth_method = "compare"`, `attr_password = ""`), []string{`key ldap.attr_password: must be set when ldap.auth_method is "compare"`}},
		{"ldap attributes", ldapDoc(`attr_address = ""`, `attr_uid = "uid number"`, `attr_enabled = "x"`, `enabled_value = ""`), []string{
			`key ldap.attr_address: must be set`, `key ldap.attr_uid: "uid number" is not an attribute name`, `key ldap.enabled_value: must be set when ldap.attr_enabled is set`}},
		{"ldap limits", ldapDoc(`timeout = "50ms"`, `pool_size = 0`, `retry_backoff = "500ms"`, `cache_size = -1`, `auth_cache_ttl = "2h"`), []string{
			`key ldap.timeout: must be at least "100ms", got "50ms"`, `key ldap.pool_size: must be between 1 and 64, got 0`,
			`key ldap.retry_backoff: must be at least "1s", got "500ms"`, `key ldap.cache_size: must be at least 0`, `key ldap.auth_cache_ttl: must be at most "1h", got "2h"`}},
		{"driver bad", doc("[userdb]", `driver = "sql"`), []string{`x.toml:2: key userdb.driver: must be "passwd-file" or "ldap", got "sql"`}},
		{"passwd_file empty", doc("[userdb]", `passwd_file = ""`), []string{`x.toml:2: key userdb.passwd_file: must be set when userdb.driver is "passwd-file"`}},
		{"maildir dot", doc("[userdb]", `maildir = "."`), nil},
		{"maildir nested", doc("[userdb]", `maildir = "mail/Maildir"`), nil},
		{"maildir empty", doc("[userdb]", `maildir = ""`), []string{`x.toml:2: key userdb.maildir: "" must be a relative path inside the home directory`}},
		{"maildir absolute", doc("[userdb]", `maildir = "/Maildir"`), []string{`x.toml:2: key userdb.maildir:`}},
		{"maildir escapes", doc("[userdb]", `maildir = "../Maildir"`), []string{`x.toml:2: key userdb.maildir:`}},
		{"delimiter several", doc("[userdb]", `recipient_delimiter = "+-"`), nil},
		{"delimiter off", doc("[userdb]", `recipient_delimiter = ""`), nil},
		{"delimiter at", doc("[userdb]", `recipient_delimiter = "+@"`), []string{`x.toml:2: key userdb.recipient_delimiter: "+@": delimiters must be punctuation`}},
		{"delimiter letter", doc("[userdb]", `recipient_delimiter = "x"`), []string{`x.toml:2: key userdb.recipient_delimiter:`}},
		{"delimiter space", doc("[userdb]", `recipient_delimiter = " "`), []string{`x.toml:2: key userdb.recipient_delimiter:`}},
		{"default_domain ok", doc("[userdb]", `default_domain = "example.org"`), nil},
		{"default_domain at", doc("[userdb]", `default_domain = "@example.org"`), []string{`x.toml:2: key userdb.default_domain: "@example.org" is not a domain name`}},
		{"default_domain space", doc("[userdb]", `default_domain = "exa mple.org"`), []string{`x.toml:2: key userdb.default_domain:`}},
		{"default_domain dots", doc("[userdb]", `default_domain = "example..org"`), []string{`x.toml:2: key userdb.default_domain:`}},
		{"quota_messages negative", doc("[userdb]", `quota_messages = -1`), []string{`x.toml:2: key userdb.quota_messages: must be at least 0, got -1`}},

		{"lmtp listen forms", doc("[lmtp]", `listen = ["unix:/run/a", "tcp:127.0.0.1:24", "[::1]:24", "localhost:2424", ":2525"]`), nil},
		{"lmtp listen empty", doc("[lmtp]", `listen = []`), nil},
		{"lmtp listen relative socket", doc("[lmtp]", `listen = ["unix:run/lmtp"]`), []string{`x.toml:2: key lmtp.listen: "unix:run/lmtp": the socket path must be absolute`}},
		{"lmtp listen long socket", doc("[lmtp]", `listen = ["unix:`+longSock+`"]`), []string{`x.toml:2: key lmtp.listen:`, `longer than 107 bytes`}},
		{"lmtp listen no port", doc("[lmtp]", `listen = ["tcp:localhost"]`), []string{`x.toml:2: key lmtp.listen: "tcp:localhost" is not "unix:/path", "tcp:host:port" or "host:port"`}},
		{"lmtp listen port 0", doc("[lmtp]", `listen = ["tcp::0"]`), []string{`x.toml:2: key lmtp.listen: "tcp::0": the port must be a number from 1 to 65535`}},
		{"lmtp listen port big", doc("[lmtp]", `listen = [":65536"]`), []string{`x.toml:2: key lmtp.listen: ":65536": the port must be`}},
		{"lmtp listen port name", doc("[lmtp]", `listen = [":lmtp"]`), []string{`x.toml:2: key lmtp.listen: ":lmtp": the port must be`}},
		{"lmtp listen bad host", doc("[lmtp]", `listen = ["exa_mple:24"]`), []string{`x.toml:2: key lmtp.listen: "exa_mple:24": "exa_mple" is neither an IP address nor a host name`}},
		{"lmtp listen scheme", doc("[lmtp]", `listen = ["udp:/x"]`), []string{`x.toml:2: key lmtp.listen: "udp:/x" is not`}},
		{"lmtp listen duplicate", doc("[lmtp]", `listen = [`, `"tcp:127.0.0.1:24",`, `"127.0.0.1:24",`, `]`), []string{`x.toml:2: key lmtp.listen: "127.0.0.1:24" is listed twice`}},
		{"lmtp max_message_size", doc("[lmtp]", `max_message_size = 0`), []string{`x.toml:2: key lmtp.max_message_size: must be at least 1, got 0`}},
		{"lmtp max_recipients", doc("[lmtp]", `max_recipients = 0`), []string{`x.toml:2: key lmtp.max_recipients: must be at least 1, got 0`}},
		{"lmtp max_user_concurrency 0", doc("[lmtp]", `max_user_concurrency = 0`), nil},
		{"lmtp max_user_concurrency", doc("[lmtp]", `max_user_concurrency = -1`), []string{`x.toml:2: key lmtp.max_user_concurrency: must be at least 0 (0 means unlimited), got -1`}},
		{"lmtp max_connections", doc("[lmtp]", `max_connections = 0`), []string{`x.toml:2: key lmtp.max_connections: must be at least 1, got 0`}},
		{"lmtp max_line_length 1000", doc("[lmtp]", `max_line_length = 1000`), nil},
		{"lmtp max_line_length", doc("[lmtp]", `max_line_length = 998`), []string{`x.toml:2: key lmtp.max_line_length: must be at least 1000 (RFC 5321 requires 1000), got 998`}},
		{"lmtp read_timeout", doc("[lmtp]", `read_timeout = "0s"`), []string{`x.toml:2: key lmtp.read_timeout: must be at least "1s", got "0s"`}},
		{"lmtp write_timeout", doc("[lmtp]", `write_timeout = "500ms"`), []string{`x.toml:2: key lmtp.write_timeout: must be at least "1s", got "500ms"`}},
		{"lmtp shutdown_timeout", doc("[lmtp]", `shutdown_timeout = "0"`), []string{`x.toml:2: key lmtp.shutdown_timeout: must be at least "1s", got "0s"`}},
		{"lmtp delivered_to always", doc("[lmtp]", `delivered_to = "always"`), nil},
		{"lmtp delivered_to", doc("[lmtp]", `delivered_to = "never"`), []string{`x.toml:2: key lmtp.delivered_to: must be "single" or "always", got "never"`}},

		{"pop3 plain", doc("[pop3]", `listen = [":110"]`), nil},
		{"pop3 tls", doc("[pop3]", `listen_tls = [":995"]`, `tls_cert = "/c"`, `tls_key = "/k"`), nil},
		{"pop3 stls", doc("[pop3]", `stls = true`, `tls_cert = "/c"`, `tls_key = "/k"`), nil},
		{"pop3 listen_tls without cert", doc("[pop3]", `listen_tls = [":995"]`), []string{
			`x.toml: key pop3.tls_cert (default): must be set when pop3.listen_tls is set`,
			`x.toml: key pop3.tls_key (default): must be set when pop3.listen_tls is set`,
		}},
		{"pop3 stls without cert", doc("[pop3]", `stls = true`, `tls_key = "/k"`), []string{`x.toml: key pop3.tls_cert (default): must be set when pop3.stls is true`}},
		{"pop3 cert without key", doc("[pop3]", `tls_cert = "/c"`), []string{`x.toml: key pop3.tls_key (default): must be set together with pop3.tls_cert and pop3.tls_key`}},
		{"pop3 relative cert", doc("[pop3]", `tls_cert = "c.pem"`, `tls_key = "/k"`), []string{`x.toml:2: key pop3.tls_cert: "c.pem" must be an absolute path`}},
		{"pop3 listen shared with lmtp", doc("[lmtp]", `listen = ["tcp::110"]`, "[pop3]", `listen = [":110"]`), []string{`x.toml:4: key pop3.listen: ":110" is also in lmtp.listen`}},
		{"pop3 listen shared with listen_tls", doc("[pop3]", `listen = [":110"]`, `listen_tls = ["tcp::110"]`, `tls_cert = "/c"`, `tls_key = "/k"`), []string{`x.toml:3: key pop3.listen_tls: "tcp::110" is also in pop3.listen`}},
		{"pop3 networks", doc("[pop3]", `trusted_networks = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1"]`, `proxy_networks = ["198.51.100.0/24"]`), nil},
		{"pop3 trusted bad", doc("[pop3]", `trusted_networks = ["10.0.0.0/33"]`), []string{`x.toml:2: key pop3.trusted_networks: "10.0.0.0/33" is not a network in CIDR notation`}},
		{"pop3 trusted host bits", doc("[pop3]", `trusted_networks = ["10.1.2.3/8"]`), []string{`x.toml:2: key pop3.trusted_networks: "10.1.2.3/8" has host bits set: did you mean "10.0.0.0/8"?`}},
		{"pop3 trusted name", doc("[pop3]", `trusted_networks = ["localhost"]`), []string{`x.toml:2: key pop3.trusted_networks: "localhost" is not a network in CIDR notation or an IP address`}},
		{"pop3 proxy bad", doc("[pop3]", `proxy_networks = ["fe80::1%eth0"]`), []string{`x.toml:2: key pop3.proxy_networks: "fe80::1%eth0" is not`}},
		{"pop3 idle_timeout", doc("[pop3]", `idle_timeout = "9m59s"`), []string{`x.toml:2: key pop3.idle_timeout: must be at least "10m", got "9m59s"`}},
		{"pop3 max_sessions", doc("[pop3]", `max_sessions = 0`), []string{`x.toml:2: key pop3.max_sessions: must be at least 1, got 0`}},
		{"pop3 max_per_ip", doc("[pop3]", `max_per_ip = 0`), []string{`x.toml:2: key pop3.max_per_ip: must be at least 1, got 0`}},
		{"pop3 auth_fail_delay 0", doc("[pop3]", `auth_fail_delay = "0s"`), nil},
		{"pop3 max_auth_failures", doc("[pop3]", `max_auth_failures = 0`), []string{`x.toml:2: key pop3.max_auth_failures: must be at least 1, got 0`}},
		{"pop3 lock_stale", doc("[pop3]", `lock_stale = "29s"`), []string{`x.toml:2: key pop3.lock_stale: must be at least "30s", got "29s"`}},
		{"pop3 uidl_format", doc("[pop3]", `uidl_format = "dovecot"`), nil},
		{"pop3 uidl_format bad", doc("[pop3]", `uidl_format = "imap"`), []string{`x.toml:2: key pop3.uidl_format: must be "maildir", "dovecot" or "courier", got "imap"`}},

		{"metrics listen", doc("[metrics]", `listen = "tcp:127.0.0.1:9100"`), nil},
		{"metrics listen bad", doc("[metrics]", `listen = "9100"`), []string{`x.toml:2: key metrics.listen: "9100" is not`}},
		{"metrics listen shared", doc("[lmtp]", `listen = ["127.0.0.1:9100"]`, "[metrics]", `listen = "tcp:127.0.0.1:9100"`), []string{`x.toml:4: key metrics.listen: "tcp:127.0.0.1:9100" is also in lmtp.listen`}},

		{"sorted by line, defaults last", doc(
			"[pop3]",
			`idle_timeout = "1m"`,
			`listen_tls = [":995"]`,
			"[store]",
			`mail_root = "x"`,
		), []string{
			`x.toml:2: key pop3.idle_timeout:`,
			`x.toml:5: key store.mail_root:`,
			`x.toml: key pop3.tls_cert (default):`,
			`x.toml: key pop3.tls_key (default):`,
		}},
		{"dotted key line", doc(`hostname = "a"`, `store.mail_root = "x"`), []string{`x.toml:2: key store.mail_root:`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.data, "x.toml")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if tt.name == "lmtp listen long socket" {
				wantErrors(t, err, tt.want[0])
				wantErrors(t, err, tt.want[1])
				return
			}
			wantErrors(t, err, tt.want...)
		})
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() does not validate: %v", err)
	}
	c.Store.MailRoot = "relative"
	c.POP3.STLS = true
	err := c.Validate()
	wantErrors(t, err,
		`key store.mail_root: "relative" must be an absolute path`,
		`key pop3.tls_cert: must be set when pop3.stls is true`,
		`key pop3.tls_key: must be set when pop3.stls is true`,
	)
	if strings.Contains(err.Error(), "(default)") {
		t.Errorf("a Config built in code has no defaults to point at: %v", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Key != "store.mail_root" || e.File != "" || e.Line != 0 {
		t.Errorf("first error: %#v", e)
	}
	if !strings.HasPrefix(err.Error(), "key store.mail_root") {
		t.Errorf("no file, so no location: %q", err)
	}
}

func TestValidateAfterParse(t *testing.T) {
	// Validate on a parsed Config, changed in code, still points at lines.
	c, err := Parse(doc("", `[store]`, `mail_root = "/srv/mail"`), "nfsdrop.toml")
	if err != nil {
		t.Fatal(err)
	}
	c.Store.MailRoot = ""
	c.Log.Level = "loud"
	wantErrors(t, c.Validate(),
		`nfsdrop.toml:3: key store.mail_root: must be set`,
		`nfsdrop.toml: key log.level (default): must be`,
	)
}

func TestSplitListen(t *testing.T) {
	for _, tt := range []struct{ in, network, address string }{
		{"unix:/run/nfsdrop/lmtp", "unix", "/run/nfsdrop/lmtp"},
		{"tcp:127.0.0.1:24", "tcp", "127.0.0.1:24"},
		{"127.0.0.1:24", "tcp", "127.0.0.1:24"},
		{"tcp:[::1]:24", "tcp", "[::1]:24"},
		{":110", "tcp", ":110"},
		{"tcp::110", "tcp", ":110"},
		{"mx.example.org:24", "tcp", "mx.example.org:24"},
	} {
		n, a, err := SplitListen(tt.in)
		if err != nil || n != tt.network || a != tt.address {
			t.Errorf("SplitListen(%q) = %q, %q, %v; want %q, %q", tt.in, n, a, err, tt.network, tt.address)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"::1", "::1/128"},
		{"2001:db8::/32", "2001:db8::/32"},
	} {
		p, err := ParsePrefix(tt.in)
		if err != nil || p.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		}
	}
}

// ldapDoc is a file selecting the LDAP driver with a base DN, then the
// given [ldap] lines from line 5.
func ldapDoc(lines ...string) []byte {
	return doc(append([]string{"[userdb]", `driver = "ldap"`, "[ldap]", `base_dn = "dc=example,dc=org"`}, lines...)...)
}

// TestVolumesDefaults: new_mailboxes is true unless a table sets it, and
// "volumes = []" is the same as no volumes.
func TestVolumesDefaults(t *testing.T) {
	c, err := Parse(doc("[store]", `mail_root = "/srv/mail"`, "[[store.volumes]]", `name = "a"`, `path = "/srv/mail/a"`,
		"[[store.volumes]]", `name = "b"`, `path = "/srv/mail/b"`, `new_mailboxes = false`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := []Volume{{Name: "a", Path: "/srv/mail/a", NewMailboxes: true}, {Name: "b", Path: "/srv/mail/b"}}
	if !slices.Equal(c.Store.Volumes, want) {
		t.Errorf("volumes = %+v, want %+v", c.Store.Volumes, want)
	}
	c, err = Parse(doc("[store]", `volumes = []`), "x.toml")
	if err != nil || c.Store.Volumes != nil {
		t.Errorf("volumes = []: %v, %#v", err, c)
	}
}
