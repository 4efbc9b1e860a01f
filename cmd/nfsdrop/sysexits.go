package main

import (
	"github.com/urfave/cli/v2"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// sysexits(3) codes, as Postfix's pipe and local delivery read them: 75 is
// "try again later", everything else non-zero bounces.
const (
	exOK          = 0
	exUsage       = 64
	exDataErr     = 65
	exNoUser      = 67
	exUnavailable = 69
	exSoftware    = 70
	exTempFail    = 75
	exNoPerm      = 77
	exConfig      = 78
)

// exitCode maps a delivery failure to its sysexits code: the deliver
// command's one error mapping. The codes are documented for operators in
// docs/postfix.md ("nfsdrop deliver as a command") and in nfsdrop(8)'s
// EXIT STATUS (man.go); keep the three in step.
func exitCode(err error) int {
	if err == nil {
		return exOK
	}
	if failure.UserFault(err) {
		return exNoUser
	}
	fe := failure.As(err)
	switch fe.Kind {
	case failure.OverQuota:
		if fe.Defer {
			return exTempFail
		}
		return exNoPerm
	case failure.TooLarge, failure.Virus, failure.Loop, failure.Permanent:
		return exUnavailable
	}
	return exTempFail
}

// exitError makes a cli error with a sysexits code.
func exitError(msg string, code int) error { return cli.Exit(msg, code) }
