// Package lmtp is nfsdrop's LMTP server (RFC 2033): a go-smtp backend in
// LMTP mode that hands each transaction to a Backend and answers DATA per
// recipient.
//
// The package knows the protocol: commands, limits (size, recipients,
// connections, concurrent deliveries per user), the log line and the
// metrics of each answer. What a delivery does (look the recipient up,
// check for a mail loop, add the trace headers, scan, store once, publish
// per recipient) is the Backend's Transaction, the one the deliver command
// drives too; this package never touches a file path. Errors from the
// Backend are *failure.Error values (package store/failure, a leaf that
// imports nothing of the store; anything else counts as temporary,
// and an *smtp.SMTPError is passed on as it is); this package maps them to
// SMTP replies in exactly one place (reply.go), so that no plain Go error
// ever reaches go-smtp, which would turn it into a permanent 554 bounce.
package lmtp

import (
	"context"
	"io"
)

// Backend begins delivery transactions.
type Backend interface {
	// Begin starts a transaction at MAIL FROM. Everything the
	// transaction does until Deliver or Abort is undone by Abort.
	Begin(env Envelope) Transaction
}

// Envelope is what a transaction knows before its first recipient: the
// sender, and what the Received trace header says about the client.
type Envelope struct {
	// From is the reverse path ("" for the null sender).
	From string
	// Helo and Remote are the client's LHLO name and address ("unix" on
	// a Unix socket); empty for a local submission.
	Helo, Remote string
	// Protocol is the Received header's "with" ("LMTP", "local").
	Protocol string
	// ID names the transaction in the Received header and the log.
	ID string
	// DeliveredToEach gives every recipient of a message for several its
	// own Delivered-To line (Options.DeliveredToAlways); otherwise only a
	// message for one recipient gets one, so that a message for many is
	// written once and hard-linked.
	DeliveredToEach bool
}

// Transaction is one delivery: recipients added one by one (RCPT), the
// message read and stored once and answered per recipient (DATA), in the
// spirit of go-smtp's LMTPData with its StatusCollector.
type Transaction interface {
	// AddRecipient resolves address (user database, quota with the size
	// still unknown) and adds it to the transaction. When admit is not
	// nil it is asked, with the canonical address (detail removed, domain
	// folded: the unit of a per-user limit), as the last step: its error
	// is returned as it is and the recipient is not added. Errors are
	// *failure.Error values: the refusal of this recipient only.
	AddRecipient(ctx context.Context, address string, admit func(canonical string) error) error
	// Deliver reads msg once and answers every added recipient exactly
	// once through status, in the order they were added (i counts from
	// 0), as soon as its answer is known. It returns how many recipients
	// the message was written for (past the mail loop check); 0 when it
	// was not read or every recipient was refused before. Deliver may
	// stop reading msg early; the caller drains it. It ends the
	// transaction.
	Deliver(ctx context.Context, msg io.Reader, status func(i int, s Status)) (written int)
	// Abort ends the transaction without delivering (RSET, a new MAIL,
	// the connection closing). It does nothing after Deliver.
	Abort()
}

// Status is one recipient's answer after DATA.
type Status struct {
	// Err is the refusal (a *failure.Error); nil when the message is
	// stored for the recipient.
	Err error
	// Key is the message's key in the recipient's mailbox and Size its
	// size there, when Err is nil.
	Key  string
	Size int64
	// Quarantined says the message went to the quarantine mailbox (a
	// virus, with scanning set to quarantine) and the recipient's answer
	// is that delivery.
	Quarantined bool
	// Recipients is how many recipients the message was written once
	// for, when this answer comes from publishing it; 0 when the
	// recipient was refused before (mail loop, message not read, the
	// write failed).
	Recipients int
	// QueueID is the queue id in the message's top Received header (the
	// sending MTA's), for the log; "" when there is none.
	QueueID string
}
