package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/clamd"
	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
)

// peerStartTimeout bounds a peer's start-up (slapadd of the data included).
const peerStartTimeout = 2 * time.Minute

// listFlag is a flag that may be given several times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// peer is "load peer slapd|clamd [flags]": the peer runs until SIGTERM,
// SIGINT or the end of standard input, then is killed by its PID and its
// directory removed.
func peer(args []string) error {
	if len(args) == 0 {
		return errors.New("peer: want slapd or clamd")
	}
	start, ok := map[string]func(context.Context, []string) (vars []string, stop func(), err error){
		"slapd": peerSlapd,
		"clamd": peerClamd,
	}[args[0]]
	if !ok {
		return fmt.Errorf("peer: unknown peer %q (slapd, clamd)", args[0])
	}
	// Signals first, so that a SIGTERM during start-up still stops the peer.
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	vars, stop, err := start(ctx, args[1:])
	if err != nil {
		return err
	}
	defer stop()
	// One write, ready marker last: a reader polling for the marker sees
	// every assignment before it.
	fmt.Print(strings.Join(append(vars, "PEER_READY=1"), "\n") + "\n")
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	<-ctx.Done()
	return nil
}

// peerSlapd starts internal/testenv/slapd with the schemas, LDIF files and
// extra slapd.conf lines given.
func peerSlapd(ctx context.Context, args []string) ([]string, func(), error) {
	fs := flag.NewFlagSet("peer slapd", flag.ContinueOnError)
	var opts slapd.Options
	var schemas, ldifs, extra listFlag
	fs.StringVar(&opts.Suffix, "suffix", "", "database suffix (default dc=example,dc=org)")
	fs.Var(&schemas, "schema", "extra schema file (repeatable)")
	fs.Var(&ldifs, "ldif", "LDIF file loaded with slapadd before slapd starts (repeatable)")
	fs.Var(&extra, "extra", "extra line for the database section, e.g. 'index nfsdropAlias eq' (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	opts.Schemas, opts.Extra = schemas, extra
	for _, p := range ldifs {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, err
		}
		opts.LDIF = append(opts.LDIF, string(b))
	}
	ctx, cancel := context.WithTimeout(ctx, peerStartTimeout)
	defer cancel()
	s, err := slapd.Start(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	return []string{
		shellVar("SLAPD_PID", strconv.Itoa(s.PID())),
		shellVar("SLAPD_DIR", s.Dir),
		shellVar("SLAPD_LOG", filepath.Join(s.Dir, "slapd.log")),
		shellVar("LDAP_URI", s.URI),
		shellVar("LDAP_SUFFIX", s.Suffix),
	}, s.Close, nil
}

// peerClamd starts internal/testenv/clamd (the one-signature EICAR
// database).
func peerClamd(ctx context.Context, args []string) ([]string, func(), error) {
	fs := flag.NewFlagSet("peer clamd", flag.ContinueOnError)
	var opts clamd.Options
	fs.StringVar(&opts.StreamMaxLength, "stream-max-length", "", "clamd.conf StreamMaxLength (default 25M)")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, peerStartTimeout)
	defer cancel()
	c, err := clamd.Start(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	return []string{
		shellVar("CLAMD_PID", strconv.Itoa(c.PID())),
		shellVar("CLAMD_DIR", c.Dir),
		shellVar("CLAMD_LOG", c.LogFile),
		shellVar("CLAMD_SOCK", c.Socket),
		shellVar("CLAMD_TCP", c.TCP),
	}, c.Close, nil
}

// shellVar is "NAME='value'", safe for eval and ".".
func shellVar(name, value string) string {
	return name + "='" + strings.ReplaceAll(value, "'", `'\''`) + "'"
}
