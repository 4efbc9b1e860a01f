// Package pop3 is nfsdrop's POP3 server: RFC 1939 with the RFC 2449
// extension mechanism, RFC 3206 response codes, RFC 5034 SASL (PLAIN,
// LOGIN), RFC 2595 STLS and implicit TLS.
//
// The protocol is kept apart from storage the way go-smtp keeps Backend and
// Session apart: the server asks a Backend to log a user in, which returns
// a Mailbox that is already locked and listed (a snapshot). The package
// never touches a file path. Errors from the Backend are *failure.Error
// values (package store/failure, a leaf that imports nothing of the
// store) and are mapped to replies in one place (reply.go): InUse gives
// [IN-USE], Temporary (and anything unknown) [SYS/TEMP], Permanent
// [SYS/PERM], the user's fault at login (failure.UserFault: NotFound,
// Disabled, BadInput) [AUTH]; NotFound from Mailbox.Open (a message
// removed after the listing) a plain -ERR.
package pop3

import (
	"context"
	"io"
	"net/netip"
)

// Client is what the server knows about the peer, for the Backend's logs
// and limits. Remote is the real client address (taken from the PROXY
// header when the connection came through a trusted load balancer).
type Client struct {
	Remote  netip.AddrPort
	TLS     bool
	Session string // session id, also in the server's log lines
}

// Backend logs users in.
type Backend interface {
	// Login checks the credentials and opens the user's mailbox: takes the
	// session lock and lists the messages. Errors: failure kind NotFound
	// or Disabled for bad credentials ([AUTH]), InUse when another session
	// holds the mailbox, Temporary for trouble ([SYS/TEMP]).
	Login(ctx context.Context, c Client, username, password string) (Mailbox, error)
}

// Message is one entry of the listing made at login (RFC 1939 section 5).
type Message struct {
	// Size is the message's size in octets with CRLF line ends, as LIST
	// and STAT report it (byte-stuffing not counted). A last line without
	// a line end counts with the CRLF that RETR adds to it.
	Size int64
	// UID is the unique-id listing: 1 to 70 characters in 0x21..0x7E,
	// stable across sessions and machines.
	UID string
}

// Mailbox is a locked, listed mailbox for one session. Message numbers in
// the protocol are 1-based: message n is Message(n-1).
type Mailbox interface {
	// Len and Message give the listing made at login, which does not
	// change during the session. They are read by index, so that a
	// backend can hand out the listing it already holds (the store's
	// cached one) without copying it at every login.
	Len() int
	Message(i int) Message
	// Open returns message i's content (0-based) as stored (bare LF or
	// CRLF); the server converts line ends and byte-stuffs. The content
	// must be the one the listing's Size counts. A message that another
	// program removed since the listing is a failure of kind NotFound.
	Open(i int) (io.ReadCloser, error)
	// Commit is the UPDATE state (after QUIT): removes the messages whose
	// indexes are given, marks the retrieved ones as seen where the
	// backend does that, and releases the lock. It returns an error when
	// some deletion failed; the client is told and nothing is claimed.
	// Indexes are 0-based and ascending; a message that is in deleted is
	// not also in retrieved.
	Commit(deleted []int, retrieved []int) error
	// Close releases the lock without changing anything (a session that
	// ends without QUIT deletes nothing).
	Close() error
}
