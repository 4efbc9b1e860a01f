package backend

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// readMessage returns the only message in local's new/.
func (w *world) readMessage(local string) string {
	w.t.Helper()
	names := w.files(local, "new")
	if len(names) != 1 {
		w.t.Fatalf("%s: new/ holds %v, want one message", local, names)
	}
	data, err := os.ReadFile(filepath.Join(w.maildir(local), "new", names[0]))
	if err != nil {
		w.t.Fatal(err)
	}
	return string(data)
}

// The trace headers: Return-Path, then (for a message written for one
// recipient) Delivered-To, then Received naming the client, this host, the
// protocol and the transaction, and that one recipient. A message for
// several recipients is written once without per-recipient lines, unless
// each recipient must get its own Delivered-To (lmtp.delivered_to =
// "always"), which goes above the shared copy.
func TestTraceHeaders(t *testing.T) {
	for _, tc := range []struct {
		name   string
		always bool
		rcpts  []string
	}{
		{"one recipient", false, []string{"alice"}},
		{"two recipients", false, []string{"alice", "bob"}},
		{"always, one recipient", true, []string{"alice"}},
		{"always, two recipients", true, []string{"alice", "bob"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOpts{lmtp: lmtp.Options{DeliveredToAlways: tc.always}}, "alice", "bob")
			var addrs []string
			for _, r := range tc.rcpts {
				addrs = append(addrs, r+"@"+testDomain)
			}
			for r, rep := range w.send(testMsg, addrs...) {
				if !strings.HasPrefix(rep, "250 ") {
					t.Fatalf("%s: %q", r, rep)
				}
			}
			for _, r := range tc.rcpts {
				data := w.readMessage(r)
				if !strings.HasSuffix(data, testMsg) {
					t.Fatalf("%s: stored message does not end with the message sent:\n%s", r, data)
				}
				trace := strings.TrimSuffix(data, testMsg)
				if len(tc.rcpts) == 1 {
					want := "Return-Path: <sender@example.net>\r\nDelivered-To: " + addrs[0] + "\r\nReceived: from client.test (127.0.0.1:"
					if !strings.HasPrefix(trace, want) {
						t.Errorf("trace %q, want it to start %q", trace, want)
					}
					if !strings.Contains(trace, "by mx.test (nfsdrop) with LMTP id ") || !strings.Contains(trace, "\tfor <"+addrs[0]+">; ") {
						t.Errorf("Received header incomplete: %q", trace)
					}
					continue
				}
				shared := trace
				if tc.always {
					own := "Delivered-To: " + r + "@" + testDomain + "\r\n"
					if !strings.HasPrefix(trace, own) {
						t.Errorf("%s: trace %q, want its own %q first", r, trace, own)
					}
					shared = strings.TrimPrefix(trace, own)
				}
				if !strings.HasPrefix(shared, "Return-Path: <sender@example.net>\r\nReceived: ") || strings.Contains(shared, "Delivered-To") || strings.Contains(shared, "for <") {
					t.Errorf("%s: the shared copy has per-recipient trace: %q", r, shared)
				}
			}
		})
	}
}

// A recipient named in a Delivered-To line of the header (any case,
// folded, or by its canonical address) is refused with 554 5.4.6; the
// others are delivered. When every recipient looped, nothing is written.
func TestLoopRefused(t *testing.T) {
	w := newWorld(t, worldOpts{}, "alice", "bob", "carol")
	looped := "Delivered-To: bob@" + testDomain + "\r\ndelivered-to:\r\n  Alice@Example.ORG\r\nSubject: loop\r\n\r\nDelivered-To: carol@" + testDomain + "\r\n"
	replies := w.send(looped, "alice@"+testDomain, "carol@"+testDomain, "bob+x@"+testDomain)
	for r, want := range map[string]string{"alice": "554 5.4.6 ", "carol": "250 2.0.0 ", "bob+x": "554 5.4.6 "} {
		if rep := replies[r+"@"+testDomain]; !strings.HasPrefix(rep, want) {
			t.Errorf("%s: %q, want %s...", r, rep, want)
		}
	}
	// Delivered-To in the body does not count.
	w.onlyMessage("carol", "Delivered-To: carol@"+testDomain+"\r\n")
	for _, u := range []string{"alice", "bob"} {
		if n := w.files(u, "new"); len(n) != 0 {
			t.Errorf("%s was refused but new/ holds %v", u, n)
		}
	}

	replies = w.send("Delivered-To: alice@"+testDomain+"\r\n\r\nbody\r\n", "alice@"+testDomain)
	if rep := replies["alice@"+testDomain]; !strings.HasPrefix(rep, "554 5.4.6 ") {
		t.Errorf("alice: %q", rep)
	}
	if n := w.files("alice", "tmp"); len(n) != 0 {
		t.Errorf("a message looped for every recipient was written: tmp/ holds %v", n)
	}
	w.spoolEmpty()
}

// brokenReader returns its data, then an error other than io.EOF.
type brokenReader struct {
	r   io.Reader
	err error
}

func (b *brokenReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, b.err
	}
	return n, err
}

// A message whose reading ends in an error (the client went away, a size
// limit) is published to nobody, written nowhere, and every recipient gets
// the failure: a temporary one, or the reader's own kind.
func TestPartialMessagePublishesNothing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		partial string
		err     error
		kind    failure.Kind
	}{
		{"cut in the body", testMsg, errors.New("connection reset"), failure.Temporary},
		{"cut in the header", "Subject: cut\r\nX-Long: never en", errors.New("connection reset"), failure.Temporary},
		{"too large", testMsg, failure.New(failure.TooLarge, "read message", "message too big", nil), failure.TooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOpts{}, "alice", "bob")
			txn := w.backend.Begin(lmtp.Envelope{From: "sender@example.net", Protocol: "local"})
			for _, r := range []string{"alice", "bob"} {
				if err := txn.AddRecipient(context.Background(), r+"@"+testDomain, nil); err != nil {
					t.Fatal(err)
				}
			}
			var got []error
			txn.Deliver(context.Background(), &brokenReader{r: strings.NewReader(tc.partial), err: tc.err}, func(i int, s lmtp.Status) {
				got = append(got, s.Err)
			})
			if len(got) != 2 {
				t.Fatalf("%d answers, want 2", len(got))
			}
			for i, err := range got {
				if err == nil || failure.KindOf(err) != tc.kind {
					t.Errorf("recipient %d: %v, want a %s failure", i, err, tc.kind)
				}
			}
			for _, u := range []string{"alice", "bob"} {
				if n := w.files(u, "new"); len(n) != 0 {
					t.Errorf("%s: new/ holds %v", u, n)
				}
				if n := w.files(u, "tmp"); len(n) != 0 {
					t.Errorf("%s: tmp/ holds %v", u, n)
				}
			}
			w.spoolEmpty()
		})
	}
}

// A reload (Swap) closes the user database it replaced, so a transaction
// begun before it looks its next recipients up in the new one, as LMTP
// did when the daemon swapped the whole backend.
func TestSwapBetweenRecipients(t *testing.T) {
	w := newWorld(t, worldOpts{}, "alice")
	txn := w.backend.Begin(lmtp.Envelope{From: "sender@example.net", Protocol: "local"})
	if err := txn.AddRecipient(context.Background(), "alice@"+testDomain, nil); err != nil {
		t.Fatal(err)
	}
	users := memUsers{"zed": &userdb.User{Name: "zed", Address: "zed@" + testDomain, Mailbox: w.maildir("zed"), UID: -1, GID: -1, Enabled: true}}
	w.backend.Swap(&Sources{Users: users, Volumes: volume.Single(w.store), Hostname: "mx.test"})
	if err := txn.AddRecipient(context.Background(), "zed@"+testDomain, nil); err != nil {
		t.Fatalf("a recipient added after the swap: %v", err)
	}
	var errs []error
	txn.Deliver(context.Background(), strings.NewReader(testMsg), func(_ int, s lmtp.Status) { errs = append(errs, s.Err) })
	if len(errs) != 2 || errs[0] != nil || errs[1] != nil {
		t.Fatalf("answers %v, want two deliveries", errs)
	}
	w.onlyMessage("alice", "body line\r\n")
	w.onlyMessage("zed", "body line\r\n")
}

// No acknowledgement to nobody: a recipient whose delivery is not done
// by the commit deadline (counted from the end of the data, where
// Postfix starts its lmtp_data_done_timeout) is answered 4xx and nothing
// is in its new/; the others are answered 250 with their message in new/.
func TestCommitDeadline(t *testing.T) {
	const deadline = 5 * time.Minute
	for _, tc := range []struct {
		name string
		// hangOp and hangPath: the filer "hangs" for the whole deadline
		// during this call.
		hangOp, hangPath string
		acked            map[string]bool
	}{
		{"in time", "", "", map[string]bool{"alice": true, "bob": true}},
		{"fsync of the staged copy hangs", "fsync", "/.nfsdrop-spool/", map[string]bool{"alice": false, "bob": false}},
		{"publish to bob hangs", "rename", "/bob/Maildir/new/", map[string]bool{"alice": true, "bob": false}},
		{"fsync of alice's new/ hangs", "syncdir", "/alice/Maildir/new", map[string]bool{"alice": false, "bob": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := testkit.NewClock(time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC))
			w := newWorld(t, worldOpts{now: clock.Now, commitDeadline: deadline}, "alice", "bob")
			var hung atomic.Bool
			w.setHook(func(op, path string) (error, bool) {
				if tc.hangOp != "" && op == tc.hangOp && strings.Contains(path, tc.hangPath) && hung.CompareAndSwap(false, true) {
					clock.Advance(deadline)
				}
				return nil, false
			})
			replies := w.send(testMsg, "alice@"+testDomain, "bob@"+testDomain)
			if tc.hangOp != "" && !hung.Load() {
				t.Fatalf("no %s call on %s: the test does not test what it says", tc.hangOp, tc.hangPath)
			}
			for _, u := range []string{"alice", "bob"} {
				rep := replies[u+"@"+testDomain]
				inNew := len(w.files(u, "new"))
				switch {
				case tc.acked[u] && (!strings.HasPrefix(rep, "250 ") || inNew != 1):
					t.Errorf("%s: %q with %d in new/, want 250 and the message in new/", u, rep, inNew)
				case !tc.acked[u] && (!strings.HasPrefix(rep, "4") || inNew != 0):
					t.Errorf("%s: %q with %d in new/, want 4xx and nothing in new/", u, rep, inNew)
				}
			}
		})
	}
}
