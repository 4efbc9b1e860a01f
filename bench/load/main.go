// Command load is the load driver and helper of the benchmarks in bench/:
// an LMTP client for bench/lmtp.sh and bench/lmtp-variants.sh, a POP3
// client for bench/pop3.sh, and what they need around them.
//
//	load lmtp send -addr 127.0.0.1:24 -sessions 4 -messages 1000 -size 2048 \
//	    -rcpts 1 -users 50 -rcpt 'u%d@bench.test'
//	load lmtp fill -n 100000 -size 2048 -host bench DIR
//	load pop3 fill -n 100000 -size 2048 DIR...
//	load pop3 fill -users 5000 -n 2 -size 1024 'ROOT/i%d/Maildir/new'...
//	load pop3 session -addr 127.0.0.1:110 -user u@d -pass x -expect 100000 [-repeat 5] [-retr [-pipeline 32]]
//	load pop3 idle -addr 127.0.0.1:110 -n 5000 [-login -user 'i%d@idle.test' -pass x]
//	load freeport
//	load peer slapd [-suffix S] [-schema FILE]... [-ldif FILE]... [-extra LINE]...
//	load peer clamd [-stream-max-length 25M]
//
// lmtp send works like Postfix's smtp-source -L -d: each session keeps one
// LMTP connection open for all its messages and waits for every reply
// before the next command (no pipelining). Unlike smtp-source it spreads
// the recipients over a fixed set of users: recipient k of the run
// (counted over all messages, k = message*rcpts + j) is -rcpt formatted
// with k mod users + 1, so with -rcpts 10 -users 50 the ten recipients of
// a message are ten different users. Any reply that is not 2xx fails the
// run (exit 1). The summary goes to standard output as key=value pairs.
// -duration D makes the run last about D instead of a number of messages:
// no session starts a message after D (-messages, when given, still caps
// the count), and the summary counts the messages actually answered. The
// summary also gives the driver's own CPU time (driver_cpu_s), so that a
// benchmark can tell the machine's other load apart. -body-line TEXT puts
// TEXT as the first line of every body (bench/lmtp-variants.sh sends the
// EICAR test string that way, to check that clamd really scans).
//
// lmtp fill writes n messages of size bytes into DIR (a Maildir's new/ or
// cur/) with unique Maildir names ("time.Mpid_nP.host,S=size" in new/,
// with ":2," added in cur/), without fsync, to pre-populate a mailbox
// quickly.
//
// pop3 fill writes the same n messages (same names, same content) into
// every DIR, a Maildir's new/ (cur/ and tmp/ next to it are made too), so
// that each server gets an identical copy of its own. Names are valid
// nfsdrop Maildir names,
// <sec>.M<usec>P<pid>Q<n>R<rand>.bench,S=<size>,W=<crlf size>, so neither
// server has to read a file to learn its size. Each message is size bytes
// with LF line ends and has one body line that starts with "." (so that
// RETR must byte-stuff it). With -users U every DIR holds a %d, replaced
// by 1..U (U mailboxes of n messages each). No fsync.
//
// pop3 session runs one POP3 session (RFC 1939, the same raw commands to
// every server; or -repeat of them, one after the other): connect,
// greeting, USER, PASS, STAT, UIDL, [LIST, RETR 1..n], QUIT; it prints
// key=value pairs, one line per session. It checks that STAT and UIDL
// count -expect messages (when given) and that the UIDLs are unique, and
// with -retr that every RETR returned (after un-byte-stuffing) exactly the
// octets LIST announced for it. A failed check exits 1.
//
// pop3 idle opens n connections at once (reads each greeting; with -login
// also USER/PASS, user -user with %d replaced by 1..n), prints "ready ..."
// and holds them until SIGTERM or SIGINT; then sends QUIT on each and
// exits.
//
// freeport prints a TCP port on 127.0.0.1 that was free a moment ago.
//
// peer starts a private slapd or clamd through internal/testenv (the same
// set-up as the integration tests: its own configuration and files in a
// new directory under /tmp, as the openldap or clamav user when root),
// waits until it answers, and prints shell assignments for a script to
// evaluate, the line PEER_READY=1 last:
//
//	slapd: SLAPD_PID SLAPD_DIR SLAPD_LOG LDAP_URI LDAP_SUFFIX
//	clamd: CLAMD_PID CLAMD_DIR CLAMD_LOG CLAMD_SOCK CLAMD_TCP
//
// (clamd's database holds one signature, for the EICAR test string). It
// then holds the peer until SIGTERM, SIGINT or the end of its standard
// input, and kills it by its PID and removes its directory. bench/lib.sh's
// bench_peer runs it with standard input from a FIFO the script holds.
package main

import (
	"fmt"
	"net"
	"os"
)

// commands maps "protocol verb" (or a lone verb) to its function.
var commands = map[string]func(args []string) error{
	"lmtp send":    lmtpSend,
	"lmtp fill":    lmtpFill,
	"pop3 fill":    pop3Fill,
	"pop3 session": pop3Sessions,
	"pop3 idle":    pop3Idle,
	"freeport":     func([]string) error { return freeport() },
	"peer":         peer,
}

func main() {
	run, args := lookup(os.Args[1:])
	if run == nil {
		fmt.Fprintln(os.Stderr, "usage: load lmtp send|fill, load pop3 fill|session|idle, load freeport, load peer slapd|clamd [flags]")
		os.Exit(2)
	}
	if err := run(args); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// lookup finds the command named by the first one or two arguments.
func lookup(args []string) (func([]string) error, []string) {
	if len(args) >= 2 {
		if run, ok := commands[args[0]+" "+args[1]]; ok {
			return run, args[2:]
		}
	}
	if len(args) >= 1 {
		if run, ok := commands[args[0]]; ok {
			return run, args[1:]
		}
	}
	return nil, nil
}

func freeport() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	return nil
}
