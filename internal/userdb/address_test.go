package userdb

import (
	"errors"
	"strings"
	"testing"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

func TestNormalize(t *testing.T) {
	plus := Normalizer{Delimiters: "+"}
	plusDash := Normalizer{Delimiters: "+-"}
	withDefault := Normalizer{Delimiters: "+", DefaultDomain: "Example.COM."}
	tests := []struct {
		name string
		n    Normalizer
		in   string
		want Address
	}{
		{"plain", Normalizer{}, "alice@example.com", Address{Local: "alice", Domain: "example.com"}},
		{"angle brackets", Normalizer{}, "<alice@example.com>", Address{Local: "alice", Domain: "example.com"}},
		{"domain case and trailing dot", Normalizer{}, "alice@Example.COM.", Address{Local: "alice", Domain: "example.com"}},
		{"local part lowercased", Normalizer{}, "Alice.Smith@example.com", Address{Local: "alice.smith", Domain: "example.com"}},
		{"no delimiter configured keeps plus", Normalizer{}, "alice+news@example.com", Address{Local: "alice+news", Domain: "example.com"}},
		{"detail split", plus, "alice+news@example.com", Address{Local: "alice", Detail: "news", Domain: "example.com"}},
		{"detail keeps case", plus, "Alice+News@example.com", Address{Local: "alice", Detail: "News", Domain: "example.com"}},
		{"split at first delimiter", plus, "alice+a+b@example.com", Address{Local: "alice", Detail: "a+b", Domain: "example.com"}},
		{"first of a delimiter set", plusDash, "alice-a+b@example.com", Address{Local: "alice", Detail: "a+b", Domain: "example.com"}},
		{"first of a delimiter set, other order", plusDash, "alice+a-b@example.com", Address{Local: "alice", Detail: "a-b", Domain: "example.com"}},
		{"leading delimiter kept", plus, "+alice@example.com", Address{Local: "+alice", Domain: "example.com"}},
		{"trailing delimiter, empty detail", plus, "alice+@example.com", Address{Local: "alice", Domain: "example.com"}},
		{"postmaster never split", Normalizer{Delimiters: "-"}, "Postmaster@example.com", Address{Local: "postmaster", Domain: "example.com"}},
		{"mailer-daemon never split", Normalizer{Delimiters: "-"}, "MAILER-DAEMON@example.com", Address{Local: "mailer-daemon", Domain: "example.com"}},
		{"owner- not split with dash", Normalizer{Delimiters: "-"}, "owner-list@example.com", Address{Local: "owner-list", Domain: "example.com"}},
		{"-request not split with dash", Normalizer{Delimiters: "-"}, "list-request@example.com", Address{Local: "list-request", Domain: "example.com"}},
		{"owner- split with plus only", Normalizer{Delimiters: "+"}, "owner-list+x@example.com", Address{Local: "owner-list", Detail: "x", Domain: "example.com"}},
		{"bare local part", Normalizer{}, "Alice", Address{Local: "alice"}},
		{"bare local part gets default domain", withDefault, "Alice+x", Address{Local: "alice", Detail: "x", Domain: "example.com"}},
		{"explicit domain beats default", withDefault, "alice@other.org", Address{Local: "alice", Domain: "other.org"}},
		{"ipv4 literal", Normalizer{}, "alice@[192.0.2.1]", Address{Local: "alice", Domain: "[192.0.2.1]"}},
		{"ipv6 literal canonicalised", Normalizer{}, "alice@[IPv6:2001:DB8::0:1]", Address{Local: "alice", Domain: "[ipv6:2001:db8::1]"}},
		{"atext specials", Normalizer{}, "a!#$%&'*=?^_`{|}~.b@example.com", Address{Local: "a!#$%&'*=?^_`{|}~.b", Domain: "example.com"}},
		{"utf-8 local part", Normalizer{}, "Jürgen@example.com", Address{Local: "jürgen", Domain: "example.com"}},
		{"hyphen and digits in domain", Normalizer{}, "a@mail-1.example.com", Address{Local: "a", Domain: "mail-1.example.com"}},
		{"local part of 64", Normalizer{}, strings.Repeat("a", 64) + "@example.com", Address{Local: strings.Repeat("a", 64), Domain: "example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.n.Normalize(tt.in)
			if err != nil {
				t.Fatalf("Normalize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Normalize(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestNormalizeRefuses(t *testing.T) {
	long := strings.Repeat("a", 60) + "@" + strings.Repeat(strings.Repeat("b", 60)+".", 4) + "com"
	tests := []struct {
		name   string
		n      Normalizer
		in     string
		reason string // substring of the Reason
	}{
		{"empty", Normalizer{}, "", "empty address"},
		{"empty brackets", Normalizer{}, "<>", "empty address"},
		{"unbalanced open", Normalizer{}, "<alice@example.com", "angle"},
		{"unbalanced close", Normalizer{}, "alice@example.com>", "angle"},
		{"nul", Normalizer{}, "alice\x00@example.com", "control"},
		{"newline", Normalizer{}, "alice\n@example.com", "control"},
		{"del", Normalizer{}, "alice\x7f@example.com", "control"},
		{"space", Normalizer{}, "alice smith@example.com", "space"},
		{"tab", Normalizer{}, "alice\t@example.com", "control"},
		{"unicode space", Normalizer{}, "alice\u00a0@example.com", "space"},
		{"invalid utf-8", Normalizer{}, "alice\xff@example.com", "UTF-8"},
		{"too long", Normalizer{}, long, "too long"},
		{"local part too long", Normalizer{}, strings.Repeat("a", 65) + "@example.com", "local part too long"},
		{"missing local part", Normalizer{}, "@example.com", "missing local part"},
		{"two ats", Normalizer{}, "alice@bob@example.com", "more than one '@'"},
		{"quoted local part", Normalizer{}, `"alice@home"@example.com`, "quoted"},
		{"empty domain", Normalizer{}, "alice@", "empty domain"},
		{"domain only a dot", Normalizer{}, "alice@.", "empty domain"},
		{"domain dots", Normalizer{}, "alice@...", "empty label"},
		{"domain dotdot label", Normalizer{}, "alice@a..b", "empty label"},
		{"leading dot in domain", Normalizer{}, "alice@.example.com", "empty label"},
		{"underscore in domain", Normalizer{}, "alice@ex_ample.com", "not allowed"},
		{"slash in domain", Normalizer{}, "alice@example.com/..", "not allowed"},
		{"utf-8 domain", Normalizer{}, "alice@exämple.com", "not allowed"},
		{"bad literal", Normalizer{}, "alice@[999.1.1.1]", "literal"},
		{"literal without bracket", Normalizer{}, "alice@[192.0.2.1", "literal"},
		{"ipv6 literal without tag", Normalizer{}, "alice@[2001:db8::1]", "literal"},
		{"label too long", Normalizer{}, "a@" + strings.Repeat("b", 64) + ".com", "label too long"},
		{"slash in local part", Normalizer{}, "../etc@example.com", "not allowed"},
		{"slash alone", Normalizer{}, "a/b", "not allowed"},
		{"dot local part", Normalizer{}, ".@example.com", "path element"},
		{"dotdot local part", Normalizer{}, "..@example.com", "path element"},
		{"dotdot bare", Normalizer{}, "..", "path element"},
		{"dotdot before detail", Normalizer{Delimiters: "+"}, "..+x@example.com", "path element"},
		{"dotdot detail", Normalizer{Delimiters: "+"}, "alice+..@example.com", "detail"},
		{"backslash", Normalizer{}, `al\ice@example.com`, "not allowed"},
		{"source route", Normalizer{}, "<@relay:alice@example.com>", "more than one"},
		{"comma", Normalizer{}, "a,b@example.com", "not allowed"},
		{"bad default domain", Normalizer{DefaultDomain: "bad_domain"}, "alice", "default domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.n.Normalize(tt.in)
			if err == nil {
				t.Fatalf("Normalize(%q) = %#v, want an error", tt.in, got)
			}
			var fe *failure.Error
			if !errors.As(err, &fe) || fe.Kind != failure.BadInput {
				t.Fatalf("Normalize(%q) error %v is not a BadInput failure", tt.in, err)
			}
			if !strings.Contains(fe.Reason, tt.reason) {
				t.Fatalf("Normalize(%q) reason %q, want it to mention %q", tt.in, fe.Reason, tt.reason)
			}
			if tt.in != "" && len(tt.in) > 3 && strings.Contains(fe.Error(), tt.in) {
				t.Fatalf("error %q echoes the input", fe.Error())
			}
		})
	}
}

func TestAddressString(t *testing.T) {
	tests := []struct {
		a    Address
		want string
	}{
		{Address{Local: "alice", Domain: "example.com"}, "alice@example.com"},
		{Address{Local: "alice", Detail: "x", Domain: "example.com"}, "alice@example.com"},
		{Address{Local: "alice"}, "alice"},
	}
	for _, tt := range tests {
		if got := tt.a.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.a, got, tt.want)
		}
	}
}

func TestNormalizerValidate(t *testing.T) {
	tests := []struct {
		n  Normalizer
		ok bool
	}{
		{Normalizer{}, true},
		{Normalizer{Delimiters: "+-_", DefaultDomain: "example.com"}, true},
		{Normalizer{Delimiters: "@"}, false},
		{Normalizer{Delimiters: "/"}, false},
		{Normalizer{Delimiters: " "}, false},
		{Normalizer{Delimiters: "é"}, false},
		{Normalizer{DefaultDomain: ".."}, false},
		{Normalizer{DefaultDomain: "a/b"}, false},
	}
	for _, tt := range tests {
		err := tt.n.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%#v.Validate() = %v, want ok=%v", tt.n, err, tt.ok)
		}
	}
}

// FuzzNormalize checks the property that matters for safety: whatever is
// accepted can be used as path elements.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"alice@example.com", "<a+b@c>", "..@x", "a@[IPv6:::1]", "+x", "A\u0130@b"} {
		f.Add(s)
	}
	n := Normalizer{Delimiters: "+-", DefaultDomain: "example.com"}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := n.Normalize(s)
		if err != nil {
			return
		}
		for _, el := range []string{a.Local, a.Domain} {
			if el == "" || el == "." || el == ".." || strings.ContainsAny(el, "/\x00") {
				t.Fatalf("Normalize(%q) gave unsafe element %q", s, el)
			}
		}
		if a.Detail == "." || a.Detail == ".." || strings.Contains(a.Detail, "/") {
			t.Fatalf("Normalize(%q) gave unsafe detail %q", s, a.Detail)
		}
		if a.Local != strings.ToLower(a.Local) || a.Domain != strings.ToLower(a.Domain) {
			t.Fatalf("Normalize(%q) = %#v not lowercased", s, a)
		}
	})
}
