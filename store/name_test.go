package store

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-maildir"
)

// maildirNames are cur/ names as nfsdrop, Dovecot and Courier write them.
var maildirNames = []string{
	"1700000000.M000001P12Q1R0a0b0c0d.mx1,S=120,W=124:2,",
	"1700000000.M000002P12Q2R0a0b0c0d.mx1,S=120,W=124:2,S",
	"1700000000.M000003P12Q3R0a0b0c0d.mx1,S=120,W=124:2,TSFR",
	"1700000001.M4P5.imap,S=9,W=10:2,Sab", // Dovecot keywords a, b
	"1700000002.12345_1.courier:2,RS",
}

// TestInfoFlagsMatchGoMaildir: the store reads a name's flags as go-maildir
// v0.6.0 does (its own parser is unexported, so its Dir lists a real cur/
// here), and the store's base name is the part of go-maildir's key before
// the ',' fields: go-maildir keeps ,S= and ,W= in the key.
func TestInfoFlagsMatchGoMaildir(t *testing.T) {
	dir := t.TempDir()
	if err := maildir.Dir(dir).Init(); err != nil {
		t.Fatal(err)
	}
	for _, n := range maildirNames {
		if err := os.WriteFile(filepath.Join(dir, "cur", n), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := maildir.Dir(dir).Messages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(maildirNames) {
		t.Fatalf("go-maildir lists %d messages, want %d", len(msgs), len(maildirNames))
	}
	for _, m := range msgs {
		name := filepath.Base(m.Filename())
		flags, ok := InfoFlags(name)
		if !ok {
			t.Errorf("%s: InfoFlags found no info section", name)
			continue
		}
		slices.Sort(flags)
		if !slices.Equal(flags, m.Flags()) {
			t.Errorf("%s: InfoFlags %q, go-maildir %q", name, string(flags), string(m.Flags()))
		}
		if base := BaseName(name); !strings.HasPrefix(m.Key(), base) || (m.Key() != base && m.Key()[len(base)] != ',') {
			t.Errorf("%s: base name %q is not go-maildir's key %q up to its fields", name, base, m.Key())
		}
	}
	for _, n := range []string{"1700000000.M1P2.mx1,S=1,W=2", "x:1,exp", "x:3,S"} {
		if _, ok := InfoFlags(n); ok {
			t.Errorf("InfoFlags(%q) found a version 2 info section", n)
		}
	}
}

// TestSeenName: the S flag is added in ASCII order, once, and the name is
// otherwise kept as it was.
func TestSeenName(t *testing.T) {
	for _, c := range []struct{ dir, name, want string }{
		{"new", "1.M1P1.h,S=1,W=2", "1.M1P1.h,S=1,W=2:2,S"},
		{"cur", "1.M1P1.h,S=1,W=2", "1.M1P1.h,S=1,W=2:2,S"},
		{"cur", "1.M1P1.h,S=1,W=2:2,TFR", "1.M1P1.h,S=1,W=2:2,FRST"},
		{"cur", "1.M1P1.h,S=1,W=2:2,RSab", ""},
		{"cur", "1.M1P1.h:1,x", "1.M1P1.h:2,S"},
	} {
		got, ok := seenName(Entry{Dir: c.dir, Name: c.name})
		if ok != (c.want != "") || got != c.want {
			t.Errorf("seenName(%s/%s) = %q, %v; want %q", c.dir, c.name, got, ok, c.want)
		}
	}
}

// TestCheckCountsFlags: maildir check counts messages in cur/ by flag.
func TestCheckCountsFlags(t *testing.T) {
	s, root := newTestStore(t, nil)
	mb := mailbox(root, "flags")
	if err := s.EnsureMaildir(mb); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(slices.Clone(maildirNames), "1700000003.M1P1.mx1,S=2,W=3") {
		if err := os.WriteFile(filepath.Join(mb.Path, "cur", n), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Check(mb.Path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Cur != 6 || rep.Seen != 4 || rep.Trashed != 1 || rep.NoInfo != 1 {
		t.Errorf("check: %+v, want 6 in cur/, 4 seen, 1 trashed, 1 without info", rep)
	}
}
