package pop3

import (
	"strings"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Replies that tests and clients match on. Response codes are RFC 2449
// section 8 ([IN-USE]) and RFC 3206 ([SYS/TEMP], [SYS/PERM], [AUTH]).
const (
	replyAuthFailed   = "-ERR [AUTH] Authentication failed"
	replyTooManyFails = "-ERR [AUTH] Too many failures"
	replyInUse        = "-ERR [IN-USE] Mailbox is locked by another session"
	replyPlaintext    = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection"
	replyInternal     = "-ERR [SYS/TEMP] internal error"
	replyLoginTimeout = "-ERR [SYS/TEMP] login timeout"
	replyNoSuchMsg    = "no such message"
)

// loginReply maps an error from Backend.Login to the reply, and says
// whether it was a bad user name or password, which counts towards
// MaxAuthFailures and is answered after AuthFailDelay. This and errReply
// are the package's only error mappings. A wrong password, an unknown
// user and a disabled account get the same reply, so the reply does not
// tell a guesser which user names exist.
func loginReply(err error) (reply string, badCredentials bool) {
	if failure.UserFault(err) {
		return replyAuthFailed, true
	}
	return errReply(err), false
}

// errReply maps any other error from the Backend or the Mailbox: [IN-USE]
// when another session holds the mailbox, [SYS/PERM] when retrying will
// not help, no response code for a message that is not there any more
// (NotFound from Mailbox.Open: another program removed it after the
// listing; that is no failure of the system), and [SYS/TEMP] for
// everything else, including errors that are not *failure.Error (an error
// we did not foresee must not make a client give up on a mailbox for
// good).
func errReply(err error) string {
	fe := failure.As(err)
	switch fe.Kind {
	case failure.InUse:
		return replyInUse
	case failure.Permanent:
		msg := "mailbox unavailable"
		if fe.Reason != "" {
			msg = fe.Reason
		}
		return "-ERR [SYS/PERM] " + oneLine(msg)
	case failure.NotFound:
		msg := "message was removed"
		if fe.Reason != "" {
			msg = fe.Reason
		}
		return "-ERR " + oneLine(msg)
	}
	msg := "temporary failure, try again later"
	if fe.Reason != "" {
		msg = fe.Reason + ", try again later"
	}
	return "-ERR [SYS/TEMP] " + oneLine(msg)
}

// oneLine keeps a reason from the Backend from breaking the reply into
// two lines: a CR or LF in it would let the second half pass for the
// answer to the client's next command.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
