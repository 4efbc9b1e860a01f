package loadcheck

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestComposeParse(t *testing.T) {
	tok, msg := Compose("run1", 7, "a@lab.test", "u1@lab.test", 900, time.Unix(0, 0))
	if tok != "run1-000007" {
		t.Fatalf("token %q", tok)
	}
	// As nfsdrop stores it: LF line ends, its own headers on top.
	stored := append([]byte("Return-Path: <a@lab.test>\nReceived: from postfix.lab.test (127.77.0.5:4711)\n\tby mx2.test (nfsdrop) with LMTP id abc.1\n\tfor <u1@lab.test>; date\n"),
		bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))...)
	p := Parse(stored)
	if !p.Intact || p.Token != tok || p.Host != "mx2.test" || p.Copy != "mx2.test abc.1" {
		t.Fatalf("stored: %+v", p)
	}
	// As RETR returns it: CRLF.
	if p := Parse(msg); !p.Intact || p.Token != tok {
		t.Fatalf("retrieved: %+v", p)
	}
	bad := bytes.Replace(msg, []byte("line 0003"), []byte("line 0004"), 1)
	if p := Parse(bad); p.Intact || !strings.Contains(p.Problem, "sha256") {
		t.Fatalf("a changed body passed: %+v", p)
	}
}

const logText = `Oct  1 10:00:00 postfix.lab.test postfix/smtpd[10]: 1A2B3C: client=localhost[127.0.0.1]
Oct  1 10:00:00 postfix.lab.test postfix/cleanup[11]: 1A2B3C: message-id=<run1-000001@loadcheck.lab.test>
Oct  1 10:00:01 postfix.lab.test postfix/lmtp[12]: 1A2B3C: to=<u1@lab.test>, relay=127.77.0.5[127.77.0.5]:24, delay=91, delays=0/0/0/90, dsn=4.4.2, status=deferred (conversation with 127.77.0.5[127.77.0.5] timed out while sending end of data -- message may be sent more than once)
Oct  1 10:00:05 postfix.lab.test postfix/lmtp[12]: 1A2B3C: to=<u1@lab.test>, relay=127.77.0.5[127.77.0.5]:24, delay=95, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <u1@lab.test> <1700000000.M000001P42Q1Rdeadbeef.mx1.test,S=100,W=103> Saved)
Oct  1 10:00:05 postfix.lab.test postfix/qmgr[13]: 1A2B3C: removed
Oct  1 10:00:06 postfix.lab.test postfix/cleanup[11]: 4D5E: message-id=<run1-000002@loadcheck.lab.test>
`

func TestMaillog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "maillog")
	// Written in two parts, the first ending in the middle of a line.
	cut := strings.Index(logText, "status=sent") + 3
	os.WriteFile(path, []byte(logText[:cut]), 0o644)
	m := NewMaillog(path)
	if err := m.Poll(); err != nil {
		t.Fatal(err)
	}
	if len(m.Sent("1A2B3C")) != 0 {
		t.Fatal("half a line parsed")
	}
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(logText[cut:])
	f.Close()
	m.Poll()
	if q := m.QueueID("run1-000001"); q != "1A2B3C" {
		t.Fatalf("queue id %q", q)
	}
	s := m.Sent("1A2B3C")
	if len(s) != 1 || s[0].Key != "1700000000.M000001P42Q1Rdeadbeef.mx1.test,S=100,W=103" {
		t.Fatalf("sent %+v", s)
	}
	a := m.Attempts("1A2B3C")
	if len(a) != 1 || !a[0].MaybeTwice || a[0].Status != "deferred" {
		t.Fatalf("attempts %+v", a)
	}
	if !m.Final("1A2B3C") || m.Final("4D5E") {
		t.Fatal("Final")
	}
	if h := hostOfKey(s[0].Key); h != "mx1.test" {
		t.Fatalf("host of key %q", h)
	}
}

// TestCheck feeds Check a small history with one of each violation.
func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "maillog")
	var log strings.Builder
	for i, q := range []string{"Q1", "Q2", "Q3", "Q4"} {
		tok := "r-00000" + string(rune('1'+i))
		log.WriteString("x postfix/cleanup[1]: " + q + ": message-id=<" + tok + "@loadcheck.lab.test>\n")
		log.WriteString("x postfix/lmtp[2]: " + q + ": to=<u1@lab.test>, relay=h, dsn=2.0.0, status=sent (250 2.0.0 <u1@lab.test> <1.M1P1Q" + q + "R0.mx1.test,S=1,W=1> Saved)\n")
	}
	os.WriteFile(path, []byte(log.String()), 0o644)
	m := NewMaillog(path)
	rec := &Recorder{}
	t0 := time.Now()
	for i := 1; i <= 4; i++ {
		tok := "r-00000" + string(rune('0'+i))
		rec.subs = append(rec.subs, &Submission{Seq: i, Token: tok, User: "u1@lab.test", QueueID: "Q" + string(rune('0'+i))})
	}
	u := func(i int) string { return "1.M1P1QQ" + string(rune('0'+i)) + "R0.mx1.test" }
	rt := func(i int) Retr {
		return Retr{N: i, UIDL: u(i), Token: "r-00000" + string(rune('0'+i)), Copy: "mx1.test id" + string(rune('0'+i)), Intact: true}
	}
	// Session 1 deletes message 1 (committed); session 2, later, lists it
	// again: resurrected. Message 2 vanishes: lost. Message 3 shows up
	// under two UIDLs: a UIDL change.
	rec.sessions = []*Session{
		{ID: 1, User: "u1@lab.test", Mode: "delete", Host: "mx1.test", Start: t0, LoginAt: t0.Add(time.Second),
			UIDLs: []string{u(1), u(2), u(3), u(4)}, Retrs: []Retr{rt(1)}, Deleted: []string{u(1)}, Quit: "ok", QuitAt: t0.Add(2 * time.Second)},
		{ID: 2, User: "u1@lab.test", Mode: "keep", Host: "mx2.test", Start: t0.Add(3 * time.Second), LoginAt: t0.Add(4 * time.Second),
			UIDLs: []string{u(1), u(3), u(4)}, Retrs: []Retr{rt(3), {N: 2, UIDL: "other", Token: rt(3).Token, Copy: rt(3).Copy, Intact: true}}, Quit: "ok"},
	}
	drain := []*Session{{ID: 3, User: "u1@lab.test", Mode: "drain", Start: t0.Add(5 * time.Second), LoginAt: t0.Add(5 * time.Second),
		UIDLs: []string{u(3), u(4)}, Retrs: []Retr{rt(3), rt(4)}, Quit: "ok"}}
	rec.sessions = append(rec.sessions, drain...)
	files := []StoredFile{
		{User: "u1@lab.test", Dir: "new", Name: u(3) + ",S=1,W=1", UIDL: u(3), Parsed: Parsed{Token: rt(3).Token, Copy: rt(3).Copy, Intact: true}},
		{User: "u1@lab.test", Dir: "new", Name: u(4) + ",S=1,W=1", UIDL: u(4), Parsed: Parsed{Token: rt(4).Token, Copy: rt(4).Copy, Intact: true}},
	}
	r := Check(rec, m, drain, files, CheckOptions{LockStale: 30 * time.Second, LockMargin: 30 * time.Second})
	t.Logf("%s", r)
	if r.Acknowledged != 4 || r.Lost != 1 || r.Resurrected != 1 || r.UIDLChanged == 0 || r.Doubled != 0 {
		t.Fatalf("lost %d resurrected %d UIDL changes %d doubled %d acknowledged %d", r.Lost, r.Resurrected, r.UIDLChanged, r.Doubled, r.Acknowledged)
	}
}

// TestCheckIMAP feeds Check an LMTP-delivered history (no mail log) with
// an IMAP client on the same Maildirs: an expunged message is not lost
// but must not be listed by a session whose PASS came later; LIST sizes
// must match RETR; a RETR failing for a message IMAP never expunged is a
// stale listing; with uidl_format "dovecot" the store's base names are
// not UIDLs.
func TestCheckIMAP(t *testing.T) {
	t0 := time.Now()
	tok := func(i int) string { return "r-00000" + string(rune('0'+i)) }
	key := func(i int) string { return "1.M1P1Q" + string(rune('0'+i)) + "R0.mx1.test,S=1,W=1" }
	cp := func(i int) string { return "mx1.test id" + string(rune('0'+i)) }
	dovecotUIDL := func(i int) string { return "0000000" + string(rune('0'+i)) + "6B10EE00" }
	rec := &Recorder{}
	for i := 1; i <= 3; i++ {
		rec.subs = append(rec.subs, &Submission{Seq: i, Token: tok(i), User: "u1", Acked: true, Key: key(i)})
	}
	listed := func(is ...int) (uidls []string, l []Listed) {
		for n, i := range is {
			uidls = append(uidls, dovecotUIDL(i))
			l = append(l, Listed{N: n + 1, UIDL: dovecotUIDL(i), Token: tok(i), Copy: cp(i)})
		}
		return
	}
	u1, l1 := listed(1, 2, 3)
	u2, l2 := listed(1, 2, 3)
	u3, l3 := listed(2, 3)
	rec.imap = []*IMAPPass{{ID: 9, User: "u1", FlagChanges: 2,
		Expunged: []Expunge{{UID: 1, DovecotUIDL: dovecotUIDL(1), Token: tok(1), Copy: cp(1), At: t0.Add(2 * time.Second)}}}}
	rec.sessions = []*Session{
		{ID: 1, User: "u1", Mode: "keep", Host: "mx1.test", Start: t0, PassSent: t0, LoginAt: t0.Add(time.Second),
			UIDLs: u1, Listed: l1, Quit: "ok", Retrs: []Retr{
				{N: 2, UIDL: dovecotUIDL(2), Token: tok(2), Copy: cp(2), Intact: true, Size: 100, Got: 98},
				{N: 3, UIDL: dovecotUIDL(3), Problem: "RETR 3: -ERR [SYS/TEMP] mail store error"},
			}},
		{ID: 2, User: "u1", Mode: "keep", Host: "mx2.test", Start: t0.Add(3 * time.Second), PassSent: t0.Add(3 * time.Second),
			LoginAt: t0.Add(4 * time.Second), UIDLs: u2, Listed: l2, Quit: "ok"},
	}
	drain := []*Session{{ID: 3, User: "u1", Mode: "drain", Start: t0.Add(5 * time.Second), PassSent: t0.Add(5 * time.Second),
		LoginAt: t0.Add(5 * time.Second), UIDLs: u3, Listed: l3, Quit: "ok", Retrs: []Retr{
			{N: 1, UIDL: dovecotUIDL(2), Token: tok(2), Copy: cp(2), Intact: true, Size: 98, Got: 98},
			{N: 2, UIDL: dovecotUIDL(3), Token: tok(3), Copy: cp(3), Intact: true, Size: 98, Got: 98},
		}}}
	rec.sessions = append(rec.sessions, drain...)
	files := []StoredFile{
		{User: "u1", Dir: "cur", Name: key(2) + ":2,S", UIDL: "1.M1P1Q2R0.mx1.test", Parsed: Parsed{Token: tok(2), Copy: cp(2), Intact: true}},
		{User: "u1", Dir: "cur", Name: key(3) + ":2,F", UIDL: "1.M1P1Q3R0.mx1.test", Parsed: Parsed{Token: tok(3), Copy: cp(3), Intact: true}},
	}
	r := Check(rec, nil, drain, files, CheckOptions{UIDLFormat: "dovecot"})
	t.Logf("%s", r)
	if r.Acknowledged != 3 || r.IMAPExpunges != 1 || r.IMAPFlagChanges != 2 {
		t.Fatalf("acknowledged %d, IMAP expunges %d, flag changes %d", r.Acknowledged, r.IMAPExpunges, r.IMAPFlagChanges)
	}
	if r.Lost != 0 || r.Resurrected != 1 || r.SizeMismatches != 1 || r.RetrFailed != 1 || r.UIDLChanged != 0 || r.DrainStoreMismatch != 0 {
		t.Fatalf("lost %d (want 0: expunged), resurrected %d (want 1: listed after the expunge), size mismatches %d, failed RETRs %d, UIDL changes %d, drain/store mismatches %d (want 1, 1, 0, 0)",
			r.Lost, r.Resurrected, r.SizeMismatches, r.RetrFailed, r.UIDLChanged, r.DrainStoreMismatch)
	}
}

// TestLongestInUse: [IN-USE] answers while the session holding the lock
// was still going on (held up by a hung filer, say) are not a lock that
// outlived its session; those after its end are.
func TestLongestInUse(t *testing.T) {
	at := func(sec int) time.Time { return time.Date(2026, 12, 3, 8, 0, sec, 0, time.UTC) }
	holder := &Session{User: "u5", Start: at(0), LoginAt: at(1), End: at(65)}
	var sessions []*Session
	sessions = append(sessions, holder)
	for sec := 5; sec <= 70; sec += 5 {
		sessions = append(sessions, &Session{User: "u5", Start: at(sec), End: at(sec), InUse: true})
	}
	sessions = append(sessions, &Session{User: "u5", Start: at(72), LoginAt: at(72), End: at(73)})
	d, u := longestInUse(sessions)
	if u != "u5" || d != 5*time.Second {
		t.Errorf("longest [IN-USE] %v for %q, want 5s (after the holder ended) for u5", d, u)
	}
	// Without the holder (a session that died), the whole stretch counts.
	d, _ = longestInUse(sessions[1:])
	if d != 65*time.Second {
		t.Errorf("longest [IN-USE] without a live holder %v, want 65s", d)
	}
}
