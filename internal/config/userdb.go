package config

import (
	"time"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
)

// The user sources take their options from [userdb], [ldap] and
// store.mail_root. The conversion lives here, beside the keys, so that a
// key added to [ldap] is wired where it is declared and validated; the
// caller only adds a logger.

// PasswdFileOptions returns the options of the passwd-file user source.
func (c *Config) PasswdFileOptions() userdb.PasswdFileOptions {
	return userdb.PasswdFileOptions{
		Path:         c.UserDB.PasswdFile,
		MailRoot:     c.Store.MailRoot,
		Volumes:      c.volumeRoots(),
		MaildirName:  c.UserDB.Maildir,
		Normalizer:   c.Normalizer(),
		DefaultQuota: c.DefaultQuota(),
	}
}

// LDAPOptions returns the options of the LDAP user source.
func (c *Config) LDAPOptions() userdb.LDAPOptions {
	l := &c.LDAP
	return userdb.LDAPOptions{
		URIs:             l.URIs,
		StartTLS:         l.StartTLS,
		CAFile:           l.CAFile,
		BindDN:           l.BindDN,
		BindPasswordFile: l.BindPasswordFile,
		BaseDN:           l.BaseDN,
		Scope:            l.Scope,
		UserFilter:       l.UserFilter,
		AuthFilter:       l.AuthFilter,
		AuthMethod:       l.AuthMethod,
		Attrs: userdb.LDAPAttributes{
			Address:       l.AttrAddress,
			Aliases:       l.AttrAliases,
			Mailbox:       l.AttrMailbox,
			QuotaStorage:  l.AttrQuotaStorage,
			QuotaMessages: l.AttrQuotaMessages,
			UID:           l.AttrUID,
			GID:           l.AttrGID,
			Enabled:       l.AttrEnabled,
			Password:      l.AttrPassword,
		},
		EnabledValue:     l.EnabledValue,
		Timeout:          time.Duration(l.Timeout),
		PoolSize:         l.PoolSize,
		RetryBackoff:     time.Duration(l.RetryBackoff),
		CacheSize:        l.CacheSize,
		CacheTTL:         time.Duration(l.CacheTTL),
		NegativeCacheTTL: time.Duration(l.NegativeCacheTTL),
		CacheMaxStale:    time.Duration(l.CacheMaxStale),
		AuthCacheTTL:     time.Duration(l.AuthCacheTTL),
		MailRoot:         c.Store.MailRoot,
		Volumes:          c.volumeRoots(),
		MaildirName:      c.UserDB.Maildir,
		Normalizer:       c.Normalizer(),
		DefaultQuota:     c.DefaultQuota(),
	}
}

// Normalizer returns how addresses and login names are normalised.
func (c *Config) Normalizer() userdb.Normalizer {
	return userdb.Normalizer{Delimiters: c.UserDB.RecipientDelimiter, DefaultDomain: c.UserDB.DefaultDomain}
}

// DefaultQuota returns the quota of users whose entry sets none.
func (c *Config) DefaultQuota() userdb.Quota {
	return userdb.Quota{Bytes: int64(c.UserDB.QuotaStorage), Messages: c.UserDB.QuotaMessages}
}

// volumeRoots are the configured volumes as the user database sees them
// (none without [[store.volumes]]: mail_root is then the one volume and
// mailbox paths mean what they always meant). Their health (Err) is wired
// by the caller that opens the volumes.
func (c *Config) volumeRoots() []userdb.VolumeRoot {
	var out []userdb.VolumeRoot
	for _, v := range c.Store.Volumes {
		out = append(out, userdb.VolumeRoot{Name: v.Name, Path: v.Path})
	}
	return out
}

// EffectiveVolumes lists the volumes with their markers: the configured
// [[store.volumes]], each marker defaulting to store.mount_marker, or,
// without any, one volume named "default" at mail_root with
// store.mount_marker.
func (c *Config) EffectiveVolumes() []Volume {
	if len(c.Store.Volumes) == 0 {
		return []Volume{{Name: "default", Path: c.Store.MailRoot, MountMarker: c.Store.MountMarker, NewMailboxes: true}}
	}
	out := make([]Volume, len(c.Store.Volumes))
	for i, v := range c.Store.Volumes {
		if v.MountMarker == "" {
			v.MountMarker = c.Store.MountMarker
		}
		out[i] = v
	}
	return out
}
