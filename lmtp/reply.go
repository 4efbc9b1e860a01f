package lmtp

import (
	"errors"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// reply maps an error from the Backend to the SMTP reply for rcpt. This is
// the package's one error mapping; every path that answers a recipient
// goes through it. An error that is not a *failure.Error is temporary.
func reply(rcpt string, err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	fe := failure.As(err)
	r := func(code int, a, b, c int, msg string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{a, b, c}, Message: msg}
	}
	switch fe.Kind {
	case failure.NotFound:
		return r(550, 5, 1, 1, "User unknown")
	case failure.Disabled:
		return r(550, 5, 2, 1, "Mailbox disabled")
	case failure.OverQuota:
		if fe.Defer {
			return r(452, 4, 2, 2, "Mailbox full, try again later")
		}
		return r(552, 5, 2, 2, "Mailbox full")
	case failure.TooLarge:
		return r(552, 5, 3, 4, "Message too big")
	case failure.Virus:
		return r(554, 5, 7, 1, "virus found: "+fe.Detail)
	case failure.Loop:
		return r(554, 5, 4, 6, "Mail loop detected")
	case failure.BadInput:
		return r(501, 5, 1, 3, "Bad recipient address syntax")
	case failure.Permanent:
		msg := "Mailbox unavailable"
		if fe.Reason != "" {
			msg = "Mailbox unavailable: " + fe.Reason
		}
		return r(550, 5, 2, 0, msg)
	}
	msg := "Temporary failure, try again later"
	if fe.Reason != "" {
		msg = fe.Reason + ", try again later"
	}
	if c, ok := parseDSN(fe.DSN); ok && c[0] == 4 {
		return &smtp.SMTPError{Code: 451, EnhancedCode: c, Message: msg}
	}
	return r(451, 4, 3, 0, msg)
}

// saved is the success reply, as Postfix logs it: "250 2.0.0 <rcpt> <key> Saved"
// (go-smtp adds the "<rcpt> " itself).
func saved(key string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "<" + key + "> Saved"}
}

// parseDSN reads an enhanced status code "x.y.z".
func parseDSN(s string) (smtp.EnhancedCode, bool) {
	var c smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return c, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return c, false
		}
		c[i] = n
	}
	return c, true
}
