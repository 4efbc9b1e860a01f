package userdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv/slapd"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// volumeFixture is a passwd-file fixture with two volumes, ROOT/v1 and
// ROOT/v2 (both exist), named "v1" and "v2".
func volumeFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(f.root, v), 0o755); err != nil {
			t.Fatal(err)
		}
		f.opts.Volumes = append(f.opts.Volumes, VolumeRoot{Name: v, Path: filepath.Join(f.root, v)})
	}
	return f
}

// TestPasswdFileVolumePaths: the forms of a mailbox path with volumes, and
// which volume each names.
func TestPasswdFileVolumePaths(t *testing.T) {
	for _, tt := range []struct {
		name, line, addr string
		want, vol        string // mailbox relative to the root; volume named
	}{
		{"no home: placed", "a@example.org:{PLAIN}x", "a@example.org", "example.org/a/Maildir", ""},
		{"relative home: placed", "a:{PLAIN}x:1:1::h/a", "a", "h/a/Maildir", ""},
		{"home NAME:rel", "a:{PLAIN}x:1:1::::home=v2:example.org/a", "a", "v2/example.org/a/Maildir", "v2"},
		{"home NAME:rel, mail ~/", "a:{PLAIN}x:1:1::::home=v2:h/a mail=maildir:~/Mail", "a", "v2/h/a/Mail", "v2"},
		{"absolute home on a volume", "a:{PLAIN}x:1:1::ROOT/v1/h/a", "a", "v1/h/a/Maildir", "v1"},
		{"absolute mail on a volume", "a:{PLAIN}x::::::mail=maildir:ROOT/v2/h/a/Maildir", "a", "v2/h/a/Maildir", "v2"},
		{"relative mail after a named home: placed", "a:{PLAIN}x:1:1::::home=v2:h/a mail=maildir:x/a", "a", "x/a", ""},
		{"colon in a relative path that is no volume name", "a:{PLAIN}x:1:1::::home=A.b:c", "a", "A.b:c/Maildir", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := volumeFixture(t)
			p := f.open(t, f.lines(tt.line))
			if len(p.Problems()) != 0 {
				t.Fatalf("Problems: %v", p.Problems())
			}
			u := mustLookup(t, p, tt.addr)
			if want := filepath.Join(f.root, tt.want); u.Mailbox != want || u.Volume != tt.vol {
				t.Fatalf("Mailbox, Volume = %q, %q; want %q, %q", u.Mailbox, u.Volume, want, tt.vol)
			}
		})
	}
}

// TestPasswdFileVolumeRefusals: an unknown volume and an absolute path on
// no volume wait for the administrator (temporary, logged with the user);
// a path that leaves its volume, lexically or by a symlink into the other
// volume, is refused for good.
func TestPasswdFileVolumeRefusals(t *testing.T) {
	for _, tt := range []struct {
		name, line string
		setup      func(t *testing.T, f *fixture)
		kind       failure.Kind
		reason     string
		log        string
	}{
		{name: "unknown volume", line: "a:{PLAIN}x:1:1::::home=v3:h/a", kind: failure.Temporary, reason: reasonUnknownVolume, log: "volume=v3"},
		{name: "absolute path on no volume", line: "a:{PLAIN}x:1:1::ROOT/other/a", kind: failure.Temporary, reason: reasonNoVolume, log: "not on a configured volume"},
		{name: "the volume itself", line: "a:{PLAIN}x::::::mail=maildir:ROOT/v1", kind: failure.Permanent, reason: reasonOutsideRoot},
		{name: "NAME:rel with dotdot into the other volume", line: "a:{PLAIN}x:1:1::::home=v1:../v2/a", kind: failure.Permanent, reason: reasonOutsideRoot},
		{name: "absolute path outside the root", line: "a:{PLAIN}x:1:1::/etc", kind: failure.Permanent, reason: reasonOutsideRoot},
		{name: "symlink from one volume into the other", line: "a:{PLAIN}x:1:1::::home=v1:h/a",
			setup: func(t *testing.T, f *fixture) {
				if err := os.MkdirAll(filepath.Join(f.root, "v2/h/b"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(filepath.Join(f.root, "v1/h"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(f.root, "v2/h/b"), filepath.Join(f.root, "v1/h/a")); err != nil {
					t.Fatal(err)
				}
			},
			kind: failure.Permanent, reason: reasonOutsideRoot, log: "symlink leads outside"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := volumeFixture(t)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			p := f.open(t, f.lines(tt.line))
			_, err := p.Lookup(t.Context(), "a")
			wantKind(t, err, tt.kind, tt.reason)
			if strings.Contains(err.Error(), f.root) {
				t.Errorf("error %q shows a path", err)
			}
			if tt.log != "" && !strings.Contains(f.log.String(), tt.log) {
				t.Errorf("log lacks %q:\n%s", tt.log, f.log.String())
			}
		})
	}
}

// TestPasswdFileVolumeDown: a named volume whose health reports it down
// fails the lookup at once, temporarily, before any file system call.
func TestPasswdFileVolumeDown(t *testing.T) {
	f := volumeFixture(t)
	down := errors.New("volume v2 unavailable")
	f.opts.Volumes[1].Err = func() error { return down }
	p := f.open(t, f.lines("a:{PLAIN}x:1:1::::home=v2:h/a", "b:{PLAIN}x:1:1::::home=v1:h/b"))
	_, err := p.Lookup(t.Context(), "a")
	wantKind(t, err, failure.Temporary, "")
	if !errors.Is(err, down) {
		t.Errorf("error %v does not wrap the volume's", err)
	}
	if u := mustLookup(t, p, "b"); u.Volume != "v1" {
		t.Errorf("b: volume %q", u.Volume)
	}
}

// TestPasswdFileVolumeGuard: the lookup's file system calls on a volume
// (resolving the mailbox path) run through the volume's Guard, the
// hung-filer gate's bound: a busy or down gate makes the lookup a
// temporary failure without touching the filer; the other volume's users
// are looked up as before.
func TestPasswdFileVolumeGuard(t *testing.T) {
	f := volumeFixture(t)
	busy := errors.New("volume v2: no free slot")
	var guarded atomic.Int32
	f.opts.Volumes[1].Guard = func(call func() error) error { guarded.Add(1); return busy }
	f.opts.Volumes[0].Guard = func(call func() error) error { guarded.Add(1); return call() }
	p := f.open(t, f.lines("a:{PLAIN}x:1:1::::home=v2:h/a", "b:{PLAIN}x:1:1::::home=v1:h/b"))
	_, err := p.Lookup(t.Context(), "a")
	wantKind(t, err, failure.Temporary, "")
	if !errors.Is(err, busy) {
		t.Errorf("error %v does not wrap the gate's", err)
	}
	if u := mustLookup(t, p, "b"); u.Volume != "v1" {
		t.Errorf("b: volume %q", u.Volume)
	}
	if n := guarded.Load(); n != 2 {
		t.Errorf("%d lookups went through a guard, want 2", n)
	}
}

// TestPasswdFileNoVolumesColon: without configured volumes a ':' in a
// path means nothing, as before volumes existed.
func TestPasswdFileNoVolumesColon(t *testing.T) {
	f := newFixture(t)
	p := f.open(t, f.lines("a:{PLAIN}x:1:1::::home=v1:h/a"))
	u := mustLookup(t, p, "a")
	if want := filepath.Join(f.root, "v1:h/a/Maildir"); u.Mailbox != want || u.Volume != "" {
		t.Errorf("Mailbox, Volume = %q, %q; want %q, \"\"", u.Mailbox, u.Volume, want)
	}
}

// volumeEntries are LDAP entries whose mailbox attribute names a volume.
func volumeEntries(mailRoot string) string {
	entry := func(uid, mbox string) string {
		return fmt.Sprintf("dn: uid=%[1]s,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nobjectClass: nfsdropUser\n"+
			"uid: %[1]s\ncn: %[1]s\nsn: %[1]s\nmail: %[1]s@example.org\nnfsdropMailbox: %[2]s\n\n", uid, mbox)
	}
	return entry("gina", "v2:example.org/gina/Maildir") +
		entry("hank", mailRoot+"/v1/example.org/hank/Maildir") +
		entry("ivan", "v9:example.org/ivan/Maildir") +
		entry("judy", "maildir:"+mailRoot+"/v2/j/judy:LAYOUT=fs") +
		entry("kurt", "v1:../v2/kurt")
}

// TestLDAPVolumes: the LDAP mailbox attribute names volumes the same way
// as the passwd-file; users without the attribute are placed.
func TestLDAPVolumes(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(root, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv := slapd.StartT(t, slapd.Options{
		Suffix:  ldapSuffix,
		Schemas: []string{"contrib/ldap/nfsdrop.schema"},
		LDIF:    []string{readContrib(t, "users.ldif"), volumeEntries(root)},
		ACL:     ldapACL,
	})
	opts := testLDAPOptions(t, root, srv.URI)
	opts.Volumes = []VolumeRoot{{Name: "v1", Path: filepath.Join(root, "v1")}, {Name: "v2", Path: filepath.Join(root, "v2")}}
	d, logs := openTestLDAP(t, opts)
	for _, tt := range []struct{ addr, mailbox, vol string }{
		{"gina@example.org", "v2/example.org/gina/Maildir", "v2"},
		{"hank@example.org", "v1/example.org/hank/Maildir", "v1"},
		{"judy@example.org", "v2/j/judy", "v2"},
		{"bob@example.org", "example.org/bob/Maildir", ""}, // no attribute: placed
	} {
		u, err := d.Lookup(t.Context(), tt.addr)
		if err != nil {
			t.Errorf("%s: %v", tt.addr, err)
			continue
		}
		if want := filepath.Join(root, tt.mailbox); u.Mailbox != want || u.Volume != tt.vol {
			t.Errorf("%s: Mailbox, Volume = %q, %q; want %q, %q", tt.addr, u.Mailbox, u.Volume, want, tt.vol)
		}
	}
	fe := ldapWantKind(t, "unknown volume", lookupErr(d, "ivan@example.org"), failure.Temporary)
	if fe.Reason != reasonUnknownVolume {
		t.Errorf("ivan: reason %q", fe.Reason)
	}
	ldapWantKind(t, "dotdot into the other volume", lookupErr(d, "kurt@example.org"), failure.Permanent)
	if l := logs.String(); !testContains(l, "user=ivan@example.org", "volume=v9") {
		t.Errorf("log of the unknown volume:\n%s", l)
	}
}
