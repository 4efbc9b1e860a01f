package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/internal/config"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

func deliverCommand() *cli.Command {
	return &cli.Command{
		Name:      "deliver",
		Usage:     "deliver one message from standard input (Postfix mailbox_command or pipe)",
		ArgsUsage: " ",
		Description: `Reads one message on standard input and stores it in each recipient's
Maildir. Exit status follows sysexits(3) as Postfix reads it: 0 stored,
67 unknown user, 69 refused (too big, loop), 75 try again later, 77 over
quota (75 when store.quota_action = "defer"). Nothing else: a configuration
error, a bad command line or an internal error is 75, so that mail waits
in Postfix's queue instead of bouncing.

Without -a, the recipient is taken from $RECIPIENT and the sender from
$SENDER, which Postfix sets for mailbox_command. With several -a, the exit
status is the most urgent one (temporary failures first): use a recipient
limit of 1 on the Postfix transport so that a retry never doubles mail.`,
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "from", Aliases: []string{"f"}, Usage: "envelope sender `ADDRESS` (default $SENDER)"},
			&cli.StringSliceFlag{Name: "rcpt", Aliases: []string{"a"}, Usage: "recipient `ADDRESS` (repeatable; default $RECIPIENT)"},
		},
		// A bad command line is the transport's configuration: mail
		// waits (and one line says why, not the whole help).
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return exitError("deliver: "+err.Error(), exTempFail)
		},
		Action: recoverAsTempFail(runDeliver),
	}
}

// deliverRanKey marks, in the app's Metadata, that the deliver action
// started: a run that ends without it (--help, "deliver help") delivered
// nothing and must not answer 0.
const deliverRanKey = "nfsdrop.deliver.ran"

// recoverAsTempFail runs action, turning a panic into EX_TEMPFAIL with the
// stack on stderr: Go's own exit status for a panic (2) would bounce the
// message, and a bug must make mail wait, not lose it.
func recoverAsTempFail(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) (err error) {
		c.App.Metadata[deliverRanKey] = true
		defer func() {
			if p := recover(); p != nil {
				fmt.Fprintf(c.App.ErrWriter, "nfsdrop: deliver: panic: %v\n%s", p, debug.Stack())
				err = exitError("deliver: internal error (panic); try again later", exTempFail)
			}
		}()
		return action(c)
	}
}

// deliverExitStatus is deliver's exit status: only 0 (stored), the
// documented permanent refusals (67, 69, 77) and 75 may reach Postfix,
// which bounces on every non-zero status but 75. Anything else (a usage
// error of the command line library, a run that never reached the action)
// becomes 75.
func deliverExitStatus(err error, ran bool, stderr io.Writer) int {
	code := exitStatus(err, stderr)
	switch {
	case code == exOK && !ran:
		fmt.Fprintln(stderr, "nfsdrop: deliver: nothing delivered (help or no action); try again later")
		return exTempFail
	case code == exOK, code == exNoUser, code == exUnavailable, code == exNoPerm, code == exTempFail:
		return code
	}
	fmt.Fprintf(stderr, "nfsdrop: deliver: exit status %d would bounce; answering %d (try again later)\n", code, exTempFail)
	return exTempFail
}

func runDeliver(c *cli.Context) error {
	start := time.Now()
	stderr := c.App.ErrWriter
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		// Not EX_CONFIG (78): Postfix bounces on it. A broken or
		// missing configuration is the administrator's to fix while
		// mail waits in the queue.
		return exitError("deliver: "+err.Error(), exTempFail)
	}
	from := c.String("from")
	if !c.IsSet("from") {
		from = os.Getenv("SENDER")
	}
	rcpts := c.StringSlice("rcpt")
	if len(rcpts) == 0 {
		if r := os.Getenv("RECIPIENT"); r != "" {
			rcpts = []string{r}
		}
	}
	if len(rcpts) == 0 {
		// The transport's command line is wrong (or $RECIPIENT unset):
		// a configuration problem, so mail waits.
		return exitError("deliver: no recipient (-a ADDRESS, or $RECIPIENT)", exTempFail)
	}
	e, err := openEnv(cfg, stderr)
	if err != nil {
		// The configuration named a userdb that cannot be opened: mail
		// must wait in Postfix's queue until the administrator fixes it.
		return exitError("deliver: "+err.Error(), exTempFail)
	}
	defer e.Close()
	log := e.log.With("from", from)
	results := deliver(e, from, rcpts, c.App.Reader, int64(cfg.LMTP.MaxMessageSize))

	worst := exOK
	for i, r := range rcpts {
		err := results[i]
		code := exitCode(err)
		if err == nil {
			continue // logged with the key by deliver
		}
		fe := failure.As(err)
		log.Warn("not delivered", "rcpt", r, "exit", code, "kind", fe.Kind.String(), "reason", reason(fe), "err", err.Error(), "duration", time.Since(start).Round(time.Microsecond))
		worst = moreUrgent(worst, code)
	}
	if worst != exOK {
		return exitError("", worst)
	}
	return nil
}

// deliver drives one delivery transaction (the one lmtpd drives too) for
// rcpts, reading the message from in only when some recipient resolved,
// and returns each recipient's outcome at its index.
func deliver(e *env, from string, rcpts []string, in io.Reader, limit int64) []error {
	ctx := context.Background()
	results := make([]error, len(rcpts))
	txn := e.backend().Begin(lmtp.Envelope{From: from, Protocol: "local"})
	var added []int // index in rcpts of each recipient added
	for i, r := range rcpts {
		if err := txn.AddRecipient(ctx, r, nil); err != nil {
			results[i] = err
			continue
		}
		added = append(added, i)
	}
	if len(added) == 0 {
		txn.Abort()
		return results
	}
	start := time.Now()
	txn.Deliver(ctx, &limitReader{r: in, left: limit, limit: limit}, func(j int, s lmtp.Status) {
		i := added[j]
		results[i] = s.Err
		if s.Err != nil {
			return
		}
		attrs := []any{"from", from, "rcpt", rcpts[i], "key", s.Key, "size", s.Size, "duration", time.Since(start).Round(time.Microsecond)}
		if s.Quarantined {
			attrs = append(attrs, "quarantined", true)
		}
		e.log.Info("delivered", attrs...)
	})
	return results
}

func reason(fe *failure.Error) string {
	if fe.Detail != "" {
		return fe.Reason + ": " + fe.Detail
	}
	return fe.Reason
}

// moreUrgent picks the exit status to report for several recipients: a
// temporary failure wins (Postfix retries, nothing bounces wrongly), then
// any failure over success.
func moreUrgent(a, b int) int {
	if a == exTempFail || b == exTempFail {
		return exTempFail
	}
	if a == exOK {
		return b
	}
	return a
}

// limitReader fails with failure.TooLarge once more than limit bytes were
// read (limit 0: no limit).
type limitReader struct {
	r           io.Reader
	left, limit int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.limit <= 0 {
		return l.r.Read(p)
	}
	if l.left < 0 {
		return 0, failure.New(failure.TooLarge, "read message", "message too big", fmt.Errorf("larger than %d bytes", l.limit))
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, failure.New(failure.TooLarge, "read message", "message too big", fmt.Errorf("larger than %d bytes", l.limit))
	}
	return n, err
}
