// Package userdb is where users come from: who a recipient address is, where
// the mailbox lives, what its quota is, and whether a password is right.
//
// Every source (the passwd-file that is the embedded default, LDAP) implements
// DB. Errors are *failure.Error values: NotFound for an unknown user,
// Disabled for an account that must not receive mail, Permanent for a user
// record that cannot be used (a mailbox path that leaves the mail root), and
// Temporary for trouble with the source itself (file unreadable, directory
// down). userdb never touches mail.
package userdb

import "context"

// Quota is a Maildir++ quota: zero means unlimited.
type Quota struct {
	Bytes    int64
	Messages int64
}

// User is what a source knows about one mailbox owner.
type User struct {
	// Name is the canonical login name (for the passwd-file, the first field).
	Name string
	// Address is the normalised address that was looked up (local@domain,
	// the recipient delimiter's detail removed).
	Address string
	// Mailbox is the absolute, cleaned path of the user's Maildir; it is
	// guaranteed to lie under the configured mail root.
	Mailbox string
	// Volume is the configured volume the entry names for the mailbox
	// ("NAME:rel/path", or an absolute path under the volume's path); ""
	// when it names none, and the mailbox, at MAILROOT/rel, is placed on a
	// volume by internal/volume (with one volume: always "").
	Volume string
	// UID and GID own the Maildir when nfsdrop runs as root; -1 when unset.
	UID, GID int
	Quota    Quota
	// Enabled is false for accounts that must not receive mail or log in.
	Enabled bool
}

// DB is a source of users.
type DB interface {
	// Lookup finds the user for a recipient address (already normalised or
	// not: implementations normalise with the Normalizer they were built
	// with).
	Lookup(ctx context.Context, address string) (*User, error)
	// Authenticate checks a login name and password. A wrong password or an
	// unknown name both give a failure.Error of kind NotFound, so the caller
	// cannot tell them apart (and must not log the password).
	Authenticate(ctx context.Context, name, password string) (*User, error)
	// Close releases connections and watchers.
	Close() error
}
