package main

// End-to-end tests with the real Dovecot IMAP server on the Maildirs
// nfsdrop serves (issue 13): lmtpd delivers, Dovecot selects (new/ to
// cur/, dovecot-uidlist), changes flags (renames in cur/) and expunges,
// while POP3 sessions run on two pop3d processes with different hostnames
// on the same mail root.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/dovecot"
	"github.com/nfsdrop/nfsdrop/store"
)

// dovecotWorld is an e2e world shared with a private Dovecot: the
// passwd-file gives alice and bob a uid, a gid and an absolute home, so
// that nfsdrop (as root) chowns their Maildirs to them and Dovecot finds
// them at ~/Maildir.
type dovecotWorld struct {
	*e2e
	imap     *dovecot.Instance
	lmtp     string
	mx1, mx2 string // POP3 listeners of the two pop3d processes
}

// dovecotUsers are the passwd-file lines of alice and bob.
func dovecotUsers(root string) []string {
	var lines []string
	for _, u := range []string{"alice", "bob"} {
		home := filepath.Join(root, pop3Domain, u)
		lines = append(lines, fmt.Sprintf("%s@%s:{PLAIN}%s:%d:%d::%s::", u, pop3Domain, pop3Pass, dovecot.TestUID, dovecot.TestGID, home))
	}
	return lines
}

// newDovecotWorld starts Dovecot, lmtpd (on mx1's configuration) and two
// pop3d processes, mx1.test and mx2.test, with uidl_format and
// move_to_cur as given.
func newDovecotWorld(t *testing.T, uidlFormat string, moveToCur bool) *dovecotWorld {
	t.Helper()
	e := newPOP3World(t)
	e.writeUsers(dovecotUsers(e.root)...)
	// Dovecot's auth process (user dovecot) reads the passwd-file and its
	// mail processes (uid 5000) reach the Maildirs.
	makeTraversable(t, e.root)
	// The homes belong to the users, as where Dovecot ran before: IMAP
	// can make a Maildir nfsdrop has not made yet (an IMAP login before
	// the first delivery).
	for _, u := range []string{"alice", "bob"} {
		home := filepath.Dir(e.pop3Maildir(u))
		if err := os.MkdirAll(home, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, dovecot.TestUID, dovecot.TestGID); err != nil {
			t.Fatal(err)
		}
	}
	w := &dovecotWorld{e2e: e, lmtp: loopback(t), mx1: loopback(t), mx2: loopback(t)}
	w.imap = dovecot.StartT(t, dovecot.Options{PasswdFile: e.users})
	loop := []string{"127.0.0.0/8"}
	cfg1 := e.writePOP3Config("mx1", pop3Conf{hostname: "mx1.test", lmtp: w.lmtp, listen: w.mx1, trusted: loop,
		uidlFormat: uidlFormat, moveToCur: moveToCur})
	cfg2 := e.writePOP3Config("mx2", pop3Conf{hostname: "mx2.test", listen: w.mx2, trusted: loop,
		uidlFormat: uidlFormat, moveToCur: moveToCur})
	e.startDaemon("lmtpd", []string{w.lmtp}, "lmtpd", "-c", cfg1)
	e.startDaemon("pop3d-mx1", []string{w.mx1}, "pop3d", "-c", cfg1)
	e.startDaemon("pop3d-mx2", []string{w.mx2}, "pop3d", "-c", cfg2)
	return w
}

// dovecotMessage is a message with a Message-ID the test follows, a line
// that must be dot-stuffed and one that is long.
func dovecotMessage(id, to string) []byte {
	return []byte("From: Sender <sender@example.net>\r\nTo: " + to + "\r\nSubject: " + id +
		"\r\nMessage-ID: <" + id + "@example.net>\r\n\r\nbody of " + id + "\r\n.a line with a leading dot\r\n" +
		strings.Repeat("long line "+id+" ", 40) + "\r\n")
}

func msgID(id string) string { return "<" + id + "@example.net>" }

// deliver sends messages to user over LMTP (lmtpd answers 250 for each).
func (w *dovecotWorld) deliver(user string, ids ...string) {
	w.t.Helper()
	for _, id := range ids {
		w.lmtpSend(w.lmtp, user, dovecotMessage(id, user))
	}
}

// imapSession logs in to Dovecot as user and selects INBOX.
func (w *dovecotWorld) imapSession(user string) (*dovecot.Client, dovecot.Mailbox) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := dovecot.Dial(ctx, w.imap.Addr, 0)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { cl.Close() })
	if err := cl.Login(user, pop3Pass); err != nil {
		w.t.Fatal(err)
	}
	mb, err := cl.Select("INBOX")
	if err != nil {
		w.t.Fatal(err)
	}
	return cl, mb
}

// imapUIDs maps Message-ID to IMAP UID for the selected mailbox.
func imapUIDs(t *testing.T, cl *dovecot.Client) map[string]uint32 {
	t.Helper()
	msgs, err := cl.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]uint32, len(msgs))
	for _, m := range msgs {
		out[m.MessageID] = m.UID
	}
	return out
}

// imapStore changes flags and fails the test when Dovecot refuses.
func imapStore(t *testing.T, cl *dovecot.Client, uid uint32, op, flags string) {
	t.Helper()
	if err := cl.Store(uid, op, flags); err != nil {
		t.Fatalf("IMAP UID STORE %d %s (%s): %v", uid, op, flags, err)
	}
}

// storedFile is one message file in a Maildir, found by its Message-ID.
type storedFile struct {
	dir, name string
	data      []byte
}

// filesByID reads every file in maildir's new/ and cur/ and maps
// Message-ID to the files carrying it (more than one is a doubled message).
func filesByID(t *testing.T, maildir string) map[string][]storedFile {
	t.Helper()
	out := make(map[string][]storedFile)
	for _, sub := range []string{"new", "cur"} {
		for _, n := range names(t, filepath.Join(maildir, sub)) {
			data, err := os.ReadFile(filepath.Join(maildir, sub, n))
			if os.IsNotExist(err) {
				continue // renamed or expunged while we looked
			}
			if err != nil {
				t.Fatal(err)
			}
			id := messageIDOf(data)
			out[id] = append(out[id], storedFile{dir: sub, name: n, data: data})
		}
	}
	return out
}

// messageIDOf is the Message-ID of a message stored with LF (Dovecot's
// LDA) or CRLF line ends, or sent by RETR.
func messageIDOf(data []byte) string {
	return peerHeader(bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n")), "Message-ID")
}

// fileOf returns the one file carrying Message-ID id.
func fileOf(t *testing.T, maildir, id string) storedFile {
	t.Helper()
	fs := filesByID(t, maildir)[id]
	if len(fs) != 1 {
		t.Fatalf("%s: %d files carry %s, want 1: %v", maildir, len(fs), id, fs)
	}
	return fs[0]
}

// wantGone fails the test for every Message-ID still stored in maildir.
func wantGone(t *testing.T, maildir, why string, ids ...string) {
	t.Helper()
	files := filesByID(t, maildir)
	for _, id := range ids {
		for _, f := range files[id] {
			t.Errorf("%s: %s is still in the Maildir as %s/%s", why, id, f.dir, f.name)
		}
	}
}

// retr sends RETR n and returns the message as sent on the wire after
// dot-unstuffing, every line with its CRLF; a -ERR answer is returned as
// an error (the session goes on).
func (p *popClient) retr(n int) ([]byte, error) {
	p.T.Helper()
	if r := p.cmd("RETR " + strconv.Itoa(n)); !strings.HasPrefix(r, "+OK") {
		return nil, fmt.Errorf("RETR %d: %q", n, r)
	}
	var b []byte
	for {
		l := p.Line()
		if l == "." {
			return b, nil
		}
		b = append(b, strings.TrimPrefix(l, ".")...)
		b = append(b, '\r', '\n')
	}
}

// byID finds the listed message with Message-ID id.
func byID(msgs []popMsg, id string) (popMsg, bool) {
	for _, m := range msgs {
		if m.id == id {
			return m, true
		}
	}
	return popMsg{}, false
}

// mustList returns the listed message with Message-ID id.
func mustList(t *testing.T, where string, msgs []popMsg, id string) popMsg {
	t.Helper()
	m, ok := byID(msgs, id)
	if !ok {
		t.Fatalf("%s does not list %s (lists %v)", where, id, idList(msgs))
	}
	return m
}

func idList(msgs []popMsg) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.id+"="+m.uidl)
	}
	return out
}

// wantNotListed fails for every id that msgs lists.
func wantNotListed(t *testing.T, where, why string, msgs []popMsg, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if m, ok := byID(msgs, id); ok {
			t.Errorf("%s lists %s (UIDL %s), %s", where, id, m.uidl, why)
		}
	}
}

// checkRetr retrieves m and checks that LIST's size is the number of
// octets RETR sent and that they are the stored file (the one with the
// same Message-ID) with CRLF line ends.
func checkRetr(t *testing.T, where string, p *popClient, m popMsg, maildir string) {
	t.Helper()
	wire, err := p.retr(m.num)
	if err != nil {
		t.Errorf("%s: %s (UIDL %s): %v", where, m.id, m.uidl, err)
		return
	}
	if int64(len(wire)) != m.size {
		t.Errorf("%s: %s (UIDL %s): LIST says %d octets, RETR sent %d", where, m.id, m.uidl, m.size, len(wire))
	}
	if got := messageIDOf(wire); got != m.id {
		t.Errorf("%s: RETR %d (UIDL %s, listed as %s) sent the message %q", where, m.num, m.uidl, m.id, got)
		return
	}
	f := fileOf(t, maildir, m.id)
	if want := pop3Wire(f.data); string(wire) != string(want) {
		t.Errorf("%s: RETR of %s sent %d octets that are not the stored %s/%s (%d octets with CRLF)", where, m.id, len(wire), f.dir, f.name, len(want))
	}
}

// popSession logs in on addr, lists (UIDL, LIST, TOP) and records every
// UIDL in book.
func popSession(t *testing.T, book *uidlBook, name, addr, user string) (*popClient, []popMsg) {
	t.Helper()
	p := dialPOP3(t, addr)
	p.mustLogin(user, pop3Pass)
	msgs := p.listing()
	book.check(name, msgs)
	return p, msgs
}

func wantQuit(t *testing.T, where string, p *popClient, deleted int) {
	t.Helper()
	want := fmt.Sprintf("(%d messages deleted)", deleted)
	if r := p.quit(); !strings.HasPrefix(r, "+OK") || !strings.Contains(r, want) {
		t.Errorf("%s QUIT: %q, want +OK ... %s", where, r, want)
	}
}

func newUIDLBook(t *testing.T) *uidlBook {
	return &uidlBook{t: t, byID: make(map[string]popMsg), byUIDL: make(map[string]string)}
}

// TestDovecotIMAPSameMaildir runs Dovecot IMAP and nfsdrop POP3 on the
// same Maildir, for each uidl_format nfsdrop can share with Dovecot, with
// and without move_to_cur. It asserts, in every session on either host:
// a message keeps the UIDL it was first listed with although Dovecot moved
// it to cur/, listed it in dovecot-uidlist and renamed it for flags; RETR
// of a renamed message sends it, LIST's size is what RETR sends; a DELE of
// a message IMAP renamed during the session removes it at QUIT; a message
// IMAP expunged is never listed again.
func TestDovecotIMAPSameMaildir(t *testing.T) {
	for _, format := range []string{store.UIDLMaildir, store.UIDLDovecot} {
		for _, moveToCur := range []bool{false, true} {
			t.Run(fmt.Sprintf("uidl_format=%s,move_to_cur=%v", format, moveToCur), func(t *testing.T) {
				dovecotSameMaildir(t, format, moveToCur)
			})
		}
	}
}

func dovecotSameMaildir(t *testing.T, format string, moveToCur bool) {
	w := newDovecotWorld(t, format, moveToCur)
	user := pop3User
	maildir := w.pop3Maildir("alice")
	book := newUIDLBook(t)
	w.deliver(user, "m1", "m2", "m3", "m4")

	// A (mx1): the first listing, before Dovecot ever saw the Maildir.
	a, listA := popSession(t, book, "A on mx1", w.mx1, user)
	if len(listA) != 4 {
		t.Fatalf("A lists %v, want m1..m4", idList(listA))
	}
	for _, m := range listA {
		checkRetr(t, "A on mx1", a, m, maildir)
	}
	wantQuit(t, "A on mx1", a, 0)

	// Dovecot selects: new/ to cur/, every message in dovecot-uidlist.
	cl, _ := w.imapSession(user)
	uids := imapUIDs(t, cl)
	if len(uids) != 4 {
		t.Fatalf("IMAP lists %v, want m1..m4", uids)
	}
	if n := names(t, filepath.Join(maildir, "new")); len(n) != 0 {
		t.Fatalf("precondition: after IMAP SELECT new/ still holds %q", n)
	}

	// B (mx2) lists; while it holds the mailbox IMAP renames m1 and m2
	// for flags and a new message arrives.
	b, listB := popSession(t, book, "B on mx2", w.mx2, user)
	m1 := mustList(t, "B on mx2", listB, msgID("m1"))
	m2 := mustList(t, "B on mx2", listB, msgID("m2"))
	m3 := mustList(t, "B on mx2", listB, msgID("m3"))
	before1, before2 := fileOf(t, maildir, m1.id).name, fileOf(t, maildir, m2.id).name
	imapStore(t, cl, uids[m1.id], "+FLAGS", `\Flagged`)
	imapStore(t, cl, uids[m2.id], "+FLAGS", `\Seen \Draft`)
	imapStore(t, cl, uids[m2.id], "-FLAGS", `\Seen`)
	if after := fileOf(t, maildir, m1.id).name; after == before1 {
		t.Fatalf("precondition: IMAP +FLAGS (\\Flagged) left m1's file name %s", after)
	}
	if after := fileOf(t, maildir, m2.id).name; after == before2 {
		t.Fatalf("precondition: IMAP STORE left m2's file name %s", after)
	}
	w.deliver(user, "m5")
	checkRetr(t, "B on mx2, m1 renamed by IMAP", b, m1, maildir)
	checkRetr(t, "B on mx2", b, m3, maildir)
	for _, m := range []popMsg{m1, m2} {
		if r := b.cmd("DELE " + strconv.Itoa(m.num)); !strings.HasPrefix(r, "+OK") {
			t.Errorf("B: DELE %d (%s): %q", m.num, m.id, r)
		}
	}
	wantQuit(t, "B on mx2", b, 2)
	wantGone(t, maildir, "deleted by B (DELE +OK, QUIT +OK) after IMAP renamed it", m1.id, m2.id)

	// C (mx1) lists m5 from new/; IMAP then moves it to cur/; C's DELE
	// must still remove it.
	c, listC := popSession(t, book, "C on mx1", w.mx1, user)
	wantNotListed(t, "C on mx1", "deleted by B", listC, m1.id, m2.id)
	m5 := mustList(t, "C on mx1", listC, msgID("m5"))
	if f := fileOf(t, maildir, m5.id); f.dir != "new" {
		t.Fatalf("precondition: m5 is in %s/ before IMAP saw it", f.dir)
	}
	if err := cl.Noop(); err != nil {
		t.Fatal(err)
	}
	if f := fileOf(t, maildir, m5.id); f.dir != "cur" {
		t.Fatalf("precondition: IMAP NOOP left m5 in %s/", f.dir)
	}
	checkRetr(t, "C on mx1, m5 moved to cur/ by IMAP", c, m5, maildir)
	if r := c.cmd("DELE " + strconv.Itoa(m5.num)); !strings.HasPrefix(r, "+OK") {
		t.Errorf("C: DELE %d (m5): %q", m5.num, r)
	}
	wantQuit(t, "C on mx1", c, 1)
	wantGone(t, maildir, "deleted by C (DELE +OK, QUIT +OK) after IMAP moved it to cur/", m5.id)

	// IMAP expunges m3; neither host lists it again.
	if err := cl.Expunge(uids[m3.id]); err != nil {
		t.Fatalf("IMAP expunge of m3: %v", err)
	}
	wantGone(t, maildir, "expunged by IMAP", m3.id)
	for _, h := range []struct{ name, addr string }{{"D on mx2", w.mx2}, {"E on mx1", w.mx1}} {
		p, msgs := popSession(t, book, h.name, h.addr, user)
		wantNotListed(t, h.name, "expunged by IMAP", msgs, m3.id)
		wantNotListed(t, h.name, "deleted over POP3", msgs, m1.id, m2.id, m5.id)
		m4 := mustList(t, h.name, msgs, msgID("m4"))
		checkRetr(t, h.name, p, m4, maildir)
		if len(msgs) != 1 {
			t.Errorf("%s lists %v, want only m4", h.name, idList(msgs))
		}
		wantQuit(t, h.name, p, 0)
	}
	if err := cl.Logout(); err != nil {
		t.Errorf("IMAP LOGOUT: %v", err)
	}
}

// TestDovecotMigratedUIDL is a user migrated from Dovecot: mail Dovecot's
// LDA stored and mail already in the Maildir is listed in dovecot-uidlist
// before nfsdrop's first POP3 login. With uidl_format "dovecot" those
// messages keep the UIDL Dovecot's POP3 gave them (%08X of the IMAP UID,
// %08X of UIDVALIDITY) in every session on either host, also after IMAP
// renames them for flags; mail nfsdrop delivers later keeps the UIDL it
// was first listed with, even after Dovecot lists it in dovecot-uidlist.
// With "maildir" every UIDL is the base name.
func TestDovecotMigratedUIDL(t *testing.T) {
	for _, format := range []string{store.UIDLDovecot, store.UIDLMaildir} {
		t.Run("uidl_format="+format, func(t *testing.T) {
			dovecotMigrated(t, format)
		})
	}
}

func dovecotMigrated(t *testing.T, format string) {
	w := newDovecotWorld(t, format, false)
	user := "bob@" + pop3Domain
	maildir := w.pop3Maildir("bob")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range []string{"old1", "old2"} {
		if err := w.imap.Deliver(ctx, user, dovecotMessage(id, user)); err != nil {
			t.Fatal(err)
		}
	}
	w.deliver(user, "old3") // in new/, no UID yet
	cl, mb := w.imapSession(user)
	uids := imapUIDs(t, cl)
	if len(uids) != 3 {
		t.Fatalf("IMAP lists %v, want old1..old3", uids)
	}
	legacy := func(id string) string { return dovecot.DovecotUIDL(uids[id], mb.UIDValidity) }

	book := newUIDLBook(t)
	wantLegacy := func(where string, msgs []popMsg) {
		t.Helper()
		for _, id := range []string{"old1", "old2", "old3"} {
			m, ok := byID(msgs, msgID(id))
			if !ok {
				continue
			}
			f := fileOf(t, maildir, m.id)
			want := store.BaseName(f.name)
			if format == store.UIDLDovecot {
				want = legacy(m.id)
			}
			if m.uidl != want {
				t.Errorf("%s: %s (file %s/%s, IMAP UID %d) has UIDL %s, want %s", where, m.id, f.dir, f.name, uids[m.id], m.uidl, want)
			}
		}
	}

	p, first := popSession(t, book, "first on mx1", w.mx1, user)
	if len(first) != 3 {
		t.Fatalf("first session lists %v, want old1..old3", idList(first))
	}
	wantLegacy("first on mx1", first)
	for _, m := range first {
		checkRetr(t, "first on mx1", p, m, maildir)
	}
	wantQuit(t, "first on mx1", p, 0)

	// New mail, first listed by nfsdrop, then given a UID by Dovecot.
	w.deliver(user, "new1")
	p, second := popSession(t, book, "second on mx2", w.mx2, user)
	wantLegacy("second on mx2", second)
	mustList(t, "second on mx2", second, msgID("new1"))
	wantQuit(t, "second on mx2", p, 0)
	if err := cl.Noop(); err != nil {
		t.Fatal(err)
	}
	uids = imapUIDs(t, cl)
	imapStore(t, cl, uids[msgID("old1")], "+FLAGS", `\Seen \Flagged`)
	imapStore(t, cl, uids[msgID("new1")], "+FLAGS", `\Seen`)

	p, third := popSession(t, book, "third on mx1", w.mx1, user)
	wantLegacy("third on mx1", third)
	if len(third) != 4 {
		t.Errorf("third session lists %v, want old1..old3 and new1", idList(third))
	}
	old1 := mustList(t, "third on mx1", third, msgID("old1"))
	checkRetr(t, "third on mx1, old1 renamed by IMAP", p, old1, maildir)
	if r := p.cmd("DELE " + strconv.Itoa(old1.num)); !strings.HasPrefix(r, "+OK") {
		t.Errorf("DELE old1: %q", r)
	}
	wantQuit(t, "third on mx1", p, 1)
	wantGone(t, maildir, "deleted over POP3", old1.id)

	p, last := popSession(t, book, "last on mx2", w.mx2, user)
	wantLegacy("last on mx2", last)
	wantNotListed(t, "last on mx2", "deleted over POP3", last, old1.id)
	if len(last) != 3 {
		t.Errorf("last session lists %v, want old2, old3 and new1", idList(last))
	}
	wantQuit(t, "last on mx2", p, 0)
}
