// Package lmtp is nfsdrop's LMTP server (RFC 2033): a go-smtp backend in
// LMTP mode that resolves each recipient at RCPT time, reads the message
// once, stores it once and answers DATA per recipient.
//
// The package knows the protocol and the trace headers; it never touches a
// file path. What it needs from the rest of nfsdrop is Backend: resolve a
// recipient, stage a message, publish it per recipient. Errors from the
// Backend are *failure.Error values (anything else counts as temporary);
// this package maps them to SMTP replies in exactly one place (reply.go),
// so that no plain Go error ever reaches go-smtp, which would turn it into
// a permanent 554 bounce.
package lmtp

import (
	"context"
	"io"
)

// Recipient is a recipient the Backend accepted at RCPT time.
type Recipient struct {
	// Address is the canonical address (detail removed, domain folded):
	// the unit of the per-user concurrency limit.
	Address string
	// Handle is the Backend's own data (the resolved mailbox), returned to
	// it unchanged.
	Handle any
}

// Backend is what the LMTP server asks of the store and the user database.
type Backend interface {
	// Resolve looks a recipient address up (user database, quota with the
	// size still unknown). It returns a *failure.Error on refusal.
	Resolve(ctx context.Context, address string) (Recipient, error)
	// Stage writes trace (the trace headers this server adds) and then msg
	// (the message as received) durably once for rcpts (at least one), and
	// scans msg when a scanner is configured. Where it writes must not let
	// one recipient's mailbox trouble fail the others: that trouble belongs
	// in that recipient's Deliver. Nothing is visible to readers until
	// Staged.Deliver.
	Stage(ctx context.Context, rcpts []Recipient, trace string, msg io.Reader) (Staged, error)
}

// Staged is a message written once, to be published to each recipient.
type Staged interface {
	// Deliver publishes the message for rcpt, with prefix (per-recipient
	// header lines) before it when prefix is non-nil, and returns the
	// message's key in that mailbox once it is durable.
	Deliver(ctx context.Context, rcpt Recipient, prefix []byte) (key string, err error)
	// Discard releases the staged copy.
	Discard()
}
