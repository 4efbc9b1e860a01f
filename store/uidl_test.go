package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// preSwitchNames are the messages of the fixtures in testdata/: the ones
// the old server knew before nfsdrop took over POP3.
var preSwitchNames = []string{
	"cur/1276528487.M364837P9451.kurkku,S=1355,W=1394:2,S",
	"cur/1276528488.M11P9452.kurkku:2,",
	"new/1276528489.M12P9453.kurkku",
}

// legacyMaildir makes a Maildir holding the pre-switch messages and,
// unless list is "", the fixture testdata/<list>.
func legacyMaildir(t *testing.T, s *Store, mb Mailbox, list string) {
	t.Helper()
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	for _, n := range preSwitchNames {
		if err := os.WriteFile(filepath.Join(mb.Path, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if list != "" {
		fixture, err := os.ReadFile(filepath.Join("testdata", list))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mb.Path, list), fixture, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// machine is one more nfsdrop machine on root, with its own (empty)
// listing cache.
func machine(t *testing.T, root, host string, fsys FS) *Store {
	t.Helper()
	no := false
	s, err := New(Options{MailRoot: root, MountMarker: testMarker, Hostname: host, Chown: &no, ESTALERetries: 3, FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// uidlsByBase lists mb on s with format and returns UIDL by base name.
func uidlsByBase(t *testing.T, s *Store, mb Mailbox, format string) map[string]string {
	t.Helper()
	opts := sessOpts
	opts.UIDLFormat = format
	ss, err := s.OpenSession(mb, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	out := map[string]string{}
	for _, e := range ss.Entries() {
		out[BaseName(e.Name)] = e.UIDL
	}
	return out
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// TestUIDLNotFlippedWhenOldServerIndexesLater is issue 13 finding 3: with
// Dovecot IMAP kept on the Maildirs, Dovecot appends messages nfsdrop
// delivered (and already showed with their base name) to dovecot-uidlist;
// Courier's pop3d, switched back on, does the same to courierpop3dsizelist.
// Their UIDLs must not change: only the messages the old list held when
// nfsdrop first listed the Maildir keep legacy UIDLs.
func TestUIDLNotFlippedWhenOldServerIndexesLater(t *testing.T) {
	legacy := map[string]map[string]string{
		UIDLDovecot: {
			"1276528487.M364837P9451.kurkku": "000000014C164767",
			"1276528488.M11P9452.kurkku":     "000000024C164767",
			"1276528489.M12P9453.kurkku":     "0000abcd-legacy",
		},
		UIDLCourier: {
			"1276528487.M364837P9451.kurkku": "UID1-1276500000",
			"1276528488.M11P9452.kurkku":     "UID2-1276500000",
			"1276528489.M12P9453.kurkku":     "1276528489.M12P9453.kurkku",
		},
	}
	// indexed is what the old server writes once it has seen the new
	// message, keyed by format: an append with the next uid, or (Dovecot
	// having rebuilt its list) a new UIDVALIDITY and new uids for all.
	type indexer func(t *testing.T, list string, newName string)
	appendEntry := map[string]indexer{
		UIDLDovecot: func(t *testing.T, list, newName string) { appendFile(t, list, "4 :"+newName+"\n") },
		UIDLCourier: func(t *testing.T, list, newName string) { appendFile(t, list, newName+" 50 3:1276500000:0\n") },
	}
	rebuild := func(t *testing.T, list, newName string) {
		var b strings.Builder
		b.WriteString("3 V1400000000 N20\n")
		for i, n := range preSwitchNames {
			b.WriteString(strings.Repeat("1", i+1) + " :" + filepath.Base(n) + "\n")
		}
		b.WriteString("9 :" + newName + "\n")
		if err := os.WriteFile(list, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, format, list string
		index              indexer
		// noListAtFirst: the old server had never written its list
		// when nfsdrop first listed the Maildir.
		noListAtFirst bool
	}{
		{name: "dovecot append", format: UIDLDovecot, list: "dovecot-uidlist", index: appendEntry[UIDLDovecot]},
		{name: "dovecot rebuilt with new UIDVALIDITY", format: UIDLDovecot, list: "dovecot-uidlist", index: rebuild},
		{name: "dovecot list appears later", format: UIDLDovecot, list: "dovecot-uidlist", index: rebuild, noListAtFirst: true},
		{name: "courier append", format: UIDLCourier, list: "courierpop3dsizelist", index: appendEntry[UIDLCourier]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, root := newTestStore(t, nil, func(o *Options) { o.Hostname = "mx1" })
			mb := mailbox(root, "switch")
			fixture := tc.list
			if tc.noListAtFirst {
				fixture = ""
			}
			legacyMaildir(t, a, mb, fixture)
			if fixture == "courierpop3dsizelist" {
				// The fixture's malformed line would keep nfsdrop from
				// recording the list (see TestLegacyListPartlyUnparsable).
				clean := strings.Replace(string(mustReadFixture(t, fixture)), "broken line\n", "", 1)
				os.WriteFile(filepath.Join(mb.Path, fixture), []byte(clean), 0o600)
			}
			d, err := a.Deliver(mb, strings.NewReader("Subject: after the switch\n\nbody\n"))
			if err != nil {
				t.Fatal(err)
			}
			newBase := BaseName(d.Key)
			first := uidlsByBase(t, a, mb, tc.format)
			if first[newBase] != newBase {
				t.Fatalf("new message's UIDL %q, want its base name", first[newBase])
			}
			if tc.noListAtFirst {
				// The pre-switch messages could only have base names.
				os.WriteFile(filepath.Join(mb.Path, tc.list), mustRead(t, filepath.Join("testdata", tc.list)), 0o600)
			}
			// The old server (Dovecot IMAP, or Courier's pop3d) indexes
			// the new message; IMAP also moves it to cur/.
			tc.index(t, filepath.Join(mb.Path, tc.list), d.Key)
			if err := os.Rename(filepath.Join(mb.Path, "new", d.Key), filepath.Join(mb.Path, "cur", d.Key+":2,")); err != nil {
				t.Fatal(err)
			}
			for _, host := range []string{"mx1", "mx2"} {
				s := a
				if host != "mx1" {
					s = machine(t, root, host, nil)
				}
				got := uidlsByBase(t, s, mb, tc.format)
				if len(got) != 4 {
					t.Fatalf("%s lists %d messages, want 4", host, len(got))
				}
				for base, was := range first {
					if got[base] != was {
						t.Errorf("%s: UIDL of %s changed from %q to %q", host, base, was, got[base])
					}
				}
				if !tc.noListAtFirst {
					for base, want := range legacy[tc.format] {
						if got[base] != want {
							t.Errorf("%s: pre-switch %s has UIDL %q, want the old server's %q", host, base, got[base], want)
						}
					}
				}
			}
		})
	}
}

// TestUIDLSnapshotFirstWriterWins: two machines listing a Maildir for the
// first time at once, each having read a different state of the old
// list, must end up answering the same UIDLs: the loser adopts the
// winner's record instead of its own reading.
func TestUIDLSnapshotFirstWriterWins(t *testing.T) {
	fsys := &faultFS{}
	a, root := newTestStore(t, fsys, func(o *Options) { o.Hostname = "mx1" })
	b := machine(t, root, "mx2", nil)
	mb := mailbox(root, "race")
	legacyMaildir(t, a, mb, "dovecot-uidlist")
	d, err := a.Deliver(mb, strings.NewReader("Subject: x\n\nbody\n"))
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(mb.Path, "dovecot-uidlist")
	var raced atomic.Bool
	fsys.hook = func(op, path string, real func() error) error {
		if op == "link" && filepath.Base(path) == snapshotName(UIDLDovecot) && raced.CompareAndSwap(false, true) {
			// mx2 reads the list just after Dovecot indexed the new
			// message, and publishes first.
			orig := mustRead(t, list)
			appendFile(t, list, "4 :"+d.Key+"\n")
			if _, _, err := b.frozenLegacyUIDLs(mb, UIDLDovecot); err != nil {
				t.Errorf("mx2: %v", err)
			}
			os.WriteFile(list, orig, 0o600)
		}
		return real()
	}
	fromA := uidlsByBase(t, a, mb, UIDLDovecot)
	if !raced.Load() {
		t.Fatal("the snapshot was not published with link()")
	}
	fromB := uidlsByBase(t, b, mb, UIDLDovecot)
	for base, u := range fromB {
		if fromA[base] != u {
			t.Errorf("%s: mx1 answers %q, mx2 %q", base, fromA[base], u)
		}
	}
	if fromA[BaseName(d.Key)] != "000000044C164767" {
		t.Errorf("mx1 did not adopt mx2's snapshot: %q", fromA[BaseName(d.Key)])
	}
	if n := len(listDir(t, filepath.Join(mb.Path, "tmp"))); n != 0 {
		t.Errorf("tmp/ holds %d files after the snapshot was published", n)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestLegacyListReadFaults is issue 13 finding 4: trouble reading the old
// server's list must not silently change UIDLs to base names, nor be
// remembered in the listing cache.
func TestLegacyListReadFaults(t *testing.T) {
	type hook = func(op, path string, real func() error) error
	onList := func(op string, errno syscall.Errno, times int) hook {
		var n atomic.Int32
		return func(o, path string, real func() error) error {
			if o == op && filepath.Base(path) == "dovecot-uidlist" && int(n.Add(1)) <= times {
				return &os.PathError{Op: op, Path: path, Err: errno}
			}
			return real()
		}
	}
	want := map[string]string{
		"1276528487.M364837P9451.kurkku": "000000014C164767",
		"1276528488.M11P9452.kurkku":     "000000024C164767",
		"1276528489.M12P9453.kurkku":     "0000abcd-legacy",
	}
	for _, tc := range []struct {
		name  string
		hook  hook
		errno syscall.Errno // 0: the login works
	}{
		{name: "ESTALE at open, once", hook: onList("open", syscall.ESTALE, 1)},
		{name: "ESTALE at read, once", hook: onList("read", syscall.ESTALE, 1)},
		{name: "ESTALE forever", hook: onList("open", syscall.ESTALE, 1000), errno: syscall.ESTALE},
		{name: "EIO at open", hook: onList("open", syscall.EIO, 1), errno: syscall.EIO},
		{name: "EIO at read", hook: onList("read", syscall.EIO, 1), errno: syscall.EIO},
		{name: "EACCES", hook: onList("open", syscall.EACCES, 1), errno: syscall.EACCES},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := &faultFS{}
			s, root := newTestStore(t, fsys)
			mb := mailbox(root, "faults")
			legacyMaildir(t, s, mb, "dovecot-uidlist")
			ageDirs(t, mb)
			fsys.hook = tc.hook
			opts := sessOpts
			opts.UIDLFormat = UIDLDovecot
			ss, err := s.OpenSession(mb, opts)
			if tc.errno == 0 {
				if err != nil {
					t.Fatalf("login: %v", err)
				}
				checkUIDLs(t, ss, want)
				ss.Close()
				return
			}
			if err == nil {
				checkUIDLs(t, ss, nil)
				ss.Close()
				t.Fatal("login answered a listing while the UIDL list could not be read")
			}
			if failure.KindOf(err) != failure.Temporary || !errors.Is(err, tc.errno) {
				t.Fatalf("want a temporary failure carrying %v, got %v", tc.errno, err)
			}
			// The failed login released its lock and cached nothing: the
			// next one, with the filer healthy again, gets the legacy
			// UIDLs.
			fsys.mu.Lock()
			fsys.hook = nil
			fsys.mu.Unlock()
			ss, err = s.OpenSession(mb, opts)
			if err != nil {
				t.Fatalf("login after the fault: %v", err)
			}
			defer ss.Close()
			if ss.CacheResult() == "hit" {
				t.Error("listing cached from the failed login")
			}
			checkUIDLs(t, ss, want)
		})
	}
}

// TestLegacyListPartlyUnparsable: a complete line that does not parse
// keeps the entries that did, but the listing is not cached and nothing
// is frozen, so the file, once fixed, gives every legacy UIDL; a torn last
// line (Dovecot appending while we read over NFS) is a message the old
// server had not finished recording: it keeps its base name, now and later.
func TestLegacyListPartlyUnparsable(t *testing.T) {
	fixture := string(mustReadFixture(t, "dovecot-uidlist"))
	lines := strings.SplitAfter(fixture, "\n")
	t.Run("malformed line", func(t *testing.T) {
		s, root := newTestStore(t, nil)
		mb := mailbox(root, "broken")
		legacyMaildir(t, s, mb, "")
		ageDirs(t, mb)
		list := filepath.Join(mb.Path, "dovecot-uidlist")
		broken := lines[0] + lines[1] + "garbage here\n" + lines[2] + lines[3]
		os.WriteFile(list, []byte(broken), 0o600)
		got := uidlsByBase(t, s, mb, UIDLDovecot)
		if got["1276528487.M364837P9451.kurkku"] != "000000014C164767" || got["1276528489.M12P9453.kurkku"] != "0000abcd-legacy" {
			t.Errorf("entries that parsed were not kept: %v", got)
		}
		opts := sessOpts
		opts.UIDLFormat = UIDLDovecot
		ss, err := s.OpenSession(mb, opts)
		if err != nil {
			t.Fatal(err)
		}
		if ss.CacheResult() == "hit" {
			t.Error("a listing made from a partly unparsable list was cached")
		}
		ss.Close()
		if _, err := os.Stat(filepath.Join(mb.Path, snapshotName(UIDLDovecot))); !os.IsNotExist(err) {
			t.Errorf("UIDLs frozen from a partly unparsable list: %v", err)
		}
		os.WriteFile(list, []byte(fixture), 0o600)
		got = uidlsByBase(t, s, mb, UIDLDovecot)
		if got["1276528488.M11P9452.kurkku"] != "000000024C164767" {
			t.Errorf("after the list was fixed: %v", got)
		}
	})
	t.Run("torn last line", func(t *testing.T) {
		s, root := newTestStore(t, nil)
		mb := mailbox(root, "torn")
		legacyMaildir(t, s, mb, "")
		ageDirs(t, mb)
		list := filepath.Join(mb.Path, "dovecot-uidlist")
		last := lines[3]
		os.WriteFile(list, []byte(lines[0]+lines[1]+lines[2]+last[:12]), 0o600)
		got := uidlsByBase(t, s, mb, UIDLDovecot)
		if got["1276528488.M11P9452.kurkku"] != "000000024C164767" {
			t.Errorf("entries before the torn line were not kept: %v", got)
		}
		torn := "1276528489.M12P9453.kurkku"
		if got[torn] != torn {
			t.Fatalf("message on the torn line: UIDL %q, want its base name", got[torn])
		}
		appendFile(t, list, last[12:])
		for _, s := range []*Store{s, machine(t, root, "mx2", nil)} {
			if u := uidlsByBase(t, s, mb, UIDLDovecot)[torn]; u != torn {
				t.Errorf("UIDL shown as %q changed to %q once the line was complete", torn, u)
			}
		}
	})
	t.Run("bad header", func(t *testing.T) {
		s, root := newTestStore(t, nil)
		mb := mailbox(root, "header")
		legacyMaildir(t, s, mb, "")
		os.WriteFile(filepath.Join(mb.Path, "dovecot-uidlist"), []byte("9 what\n1 :x\n"), 0o600)
		opts := sessOpts
		opts.UIDLFormat = UIDLDovecot
		if _, err := s.OpenSession(mb, opts); err == nil || failure.KindOf(err) != failure.Temporary {
			t.Fatalf("unreadable header: want a temporary failure, got %v", err)
		}
	})
}

func mustReadFixture(t *testing.T, name string) []byte {
	return mustRead(t, filepath.Join("testdata", name))
}

// ageDirs makes new/ and cur/ old enough for their listing to be cached.
func ageDirs(t *testing.T, mb Mailbox) {
	t.Helper()
	old := time.Now().Add(-time.Hour)
	for _, d := range []string{"new", "cur"} {
		if err := os.Chtimes(filepath.Join(mb.Path, d), old, old); err != nil {
			t.Fatal(err)
		}
	}
}

func checkUIDLs(t *testing.T, ss *Session, want map[string]string) {
	t.Helper()
	for _, e := range ss.Entries() {
		if w := want[BaseName(e.Name)]; e.UIDL != w {
			t.Errorf("%s: UIDL %q, want %q", e.Name, e.UIDL, w)
		}
	}
}
