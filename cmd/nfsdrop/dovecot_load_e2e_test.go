package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/contrib/lab/loadcheck"
	"github.com/nfsdrop/nfsdrop/store"
)

// dovecotLoadEnv sets the load's duration per UIDL format, as a Go
// duration ("60s"); unset, the load runs dovecotLoadShort, the CI length.
const (
	dovecotLoadEnv   = "NFSDROP_DOVECOT_LOAD"
	dovecotLoadShort = 6 * time.Second
)

func dovecotLoadDuration(t *testing.T) time.Duration {
	v := os.Getenv(dovecotLoadEnv)
	if v == "" {
		return dovecotLoadShort
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 60s", dovecotLoadEnv, v)
	}
	return d
}

// TestDovecotLoad is the consistency-checking load (contrib/lab/loadcheck)
// on loopback with Dovecot IMAP in the background: senders deliver over
// LMTP to lmtpd, POP3 clients on two pop3d processes (mx1.test, mx2.test)
// list, read every listed header (TOP n 0), retrieve and delete, and an
// IMAP client on Dovecot keeps selecting the same mailboxes, setting and
// clearing \Seen and \Flagged and now and then expunging a message. At the
// end a drain reads every mailbox and the checker compares everything
// with the store: nothing lost, doubled or back after a committed DELE or
// an IMAP expunge, every UIDL unchanged, LIST sizes equal to what RETR
// sends, no RETR failing for a message still stored.
//
// It runs once per UIDL format nfsdrop shares with Dovecot ("maildir"
// without move_to_cur, "dovecot" with it), each for 6 seconds, or for
// NFSDROP_DOVECOT_LOAD (a Go duration) when set:
//
//	NFSDROP_DOVECOT_LOAD=60s go test -race -count=1 -run TestDovecotLoad -v ./cmd/nfsdrop/
func TestDovecotLoad(t *testing.T) {
	d := dovecotLoadDuration(t)
	for _, c := range []struct {
		format    string
		moveToCur bool
	}{{store.UIDLMaildir, false}, {store.UIDLDovecot, true}} {
		t.Run("uidl_format="+c.format, func(t *testing.T) {
			dovecotLoad(t, c.format, c.moveToCur, d)
		})
	}
}

func dovecotLoad(t *testing.T, format string, moveToCur bool, d time.Duration) {
	w := newDovecotWorld(t, format, moveToCur)
	users := []string{"alice@" + pop3Domain, "bob@" + pop3Domain}
	var dialer net.Dialer
	cfg := loadcheck.Config{
		Dial:      dialer.DialContext,
		LMTPAddr:  w.lmtp,
		POP3Addrs: []string{w.mx1, w.mx2},
		IMAPAddr:  w.imap.Addr,
		Users:     users,
		Password:  pop3Pass,
		Run:       "dovecot-" + format,
		Senders:   2,
		// Mail arrives faster than the deleter takes it, so mailboxes
		// fill and IMAP has messages to rename; RETRs come with think
		// time, so that IMAP renames messages under open sessions.
		Rate:             20,
		Keepers:          2,
		Deleters:         1,
		RetrPerKeep:      3,
		RetrPerDelete:    4,
		RetrPause:        10 * time.Millisecond,
		IdentifyAll:      true,
		IMAPClients:      1,
		ExpungeOneIn:     3,
		IMAPFlagsPerPass: 8,
		Pause:            100 * time.Millisecond,
		Timeout:          30 * time.Second,
		Seed:             1,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ld, err := loadcheck.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(d) // the load's length, not a wait for an outcome
	ld.Stop()
	drain := ld.Drain(ctx, time.Minute)
	files, notes, err := loadcheck.ScanMaildirs(users, func(u string) string {
		return w.pop3Maildir(strings.TrimSuffix(u, "@"+pop3Domain))
	})
	if err != nil {
		t.Fatal(err)
	}
	// pop3.lock_stale is 5 minutes: no session dies here, so no mailbox
	// should stay locked for long.
	rep := loadcheck.Check(ld.Rec, nil, drain, files, loadcheck.CheckOptions{LockStale: 5 * time.Minute, LockMargin: 30 * time.Second, UIDLFormat: format})
	rep.Notes = append(rep.Notes, notes...)
	t.Logf("uidl_format %s, move_to_cur %v, %v of load:\n%s", format, moveToCur, d, rep)
	if v := rep.Violations(); v > 0 {
		dump := filepath.Join(os.TempDir(), "nfsdrop-dovecot-load-"+format+".json")
		if err := ld.Rec.Dump(dump); err == nil {
			t.Logf("every submission, session and IMAP pass: %s", dump)
		}
		t.Errorf("%d violations of the invariants (see the report above)", v)
	}
	// The load must have exercised what it is about.
	if rep.Acknowledged == 0 || rep.Commits == 0 || rep.IMAPFlagChanges == 0 || rep.IMAPExpunges == 0 {
		t.Errorf("the load did too little to prove anything: %d delivered, %d POP3 commits, %d IMAP flag changes, %d IMAP expunges",
			rep.Acknowledged, rep.Commits, rep.IMAPFlagChanges, rep.IMAPExpunges)
	}
}
