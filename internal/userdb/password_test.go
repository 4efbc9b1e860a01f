package userdb

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// Fixed vectors made by independent implementations, so VerifyPassword is
// not only checked against the library that also produced the hash.
var knownVectors = []struct {
	name, stored, password string
}{
	// openssl passwd -6 -salt saltsalt secret
	{"SHA512-CRYPT openssl", "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", "secret"},
	// openssl passwd -5 -salt saltsalt secret
	{"SHA256-CRYPT openssl", "{SHA256-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret"},
	// openssl passwd -1 -salt saltsalt secret
	{"MD5-CRYPT openssl", "{MD5-CRYPT}$1$saltsalt$9xy1btjgzLYfb7hivXtC//", "secret"},
	// The same, as {CRYPT}, without prefix, and with a lowercase scheme.
	{"CRYPT $6$", "{CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", "secret"},
	{"no prefix $5$", "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret"},
	{"no prefix $1$", "$1$saltsalt$9xy1btjgzLYfb7hivXtC//", "secret"},
	{"lowercase scheme", "{sha512-crypt}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", "secret"},
	// The PHP manual's password_verify example: a $2y$ hash as Dovecot writes.
	{"BLF-CRYPT $2y$", "{BLF-CRYPT}$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a", "rasmuslerdorf"},
	{"CRYPT $2y$", "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a", "rasmuslerdorf"},
	// The argon2 reference implementation's README example.
	{"ARGON2I reference", "{ARGON2I}$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", "password"},
	// argon2-cffi's documented example.
	{"ARGON2ID argon2-cffi", "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", "correct horse battery staple"},
	{"CRYPT argon2id", "$argon2id$v=19$m=65536,t=3,p=4$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", "correct horse battery staple"},
	// Python hashlib, salt "salt1234" (slappasswd is not installed here).
	{"SSHA", "{SSHA}Wcm1xEisNjqp921ALcHfuQ7avFdzYWx0MTIzNA==", "secret"},
	{"SSHA256", "{SSHA256}lXT7qF+fT7OVoVlwD0tMd02E1ak2dLDbk993wZxIM65zYWx0MTIzNA==", "secret"},
	{"SSHA512", "{SSHA512}Enu6C74BUnsH3FJ5DbcJeTfPKMqMpMZOm66wJaf/iZqtrDfdcDyFhEmcwbcWyY5CUEDqbpdskEI2yPdeCZGVPXNhbHQxMjM0", "secret"},
	{"SSHA.HEX", "{SSHA.HEX}b890ddd0121d27d67bc8309935676061e6f7dfe701020304", "secret"},
	{"SHA", "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "secret"},
	{"PLAIN", "{PLAIN}secret", "secret"},
	{"CLEAR", "{CLEAR}secret", "secret"},
	{"PLAIN empty-looking", "{plain}s3cr3t with spaces", "s3cr3t with spaces"},
}

func TestVerifyPasswordKnownVectors(t *testing.T) {
	for _, tt := range knownVectors {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // argon2 and bcrypt are slow on purpose
			ok, err := VerifyPassword(tt.stored, tt.password)
			if err != nil || !ok {
				t.Fatalf("right password: ok=%v err=%v", ok, err)
			}
			for _, wrong := range []string{tt.password + "x", strings.ToUpper(tt.password), "", tt.password[:len(tt.password)-1]} {
				ok, err := VerifyPassword(tt.stored, wrong)
				if err != nil || ok {
					t.Fatalf("wrong password %q: ok=%v err=%v", wrong, ok, err)
				}
			}
		})
	}
}

func TestHashPasswordRoundTrip(t *testing.T) {
	schemes := []string{"SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "ARGON2ID", "ARGON2I",
		"SSHA", "SSHA256", "SSHA512", "PLAIN", "CLEAR", "{ssha}", "blf-crypt"}
	for _, scheme := range schemes {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			h, err := HashPassword(scheme, "Tr0ub4dor&3")
			if err != nil {
				t.Fatal(err)
			}
			want := "{" + strings.ToUpper(strings.Trim(scheme, "{}")) + "}"
			if !strings.HasPrefix(h, want) {
				t.Fatalf("hash %q does not start with %q", h, want)
			}
			if ok, err := VerifyPassword(h, "Tr0ub4dor&3"); !ok || err != nil {
				t.Fatalf("right password: ok=%v err=%v", ok, err)
			}
			if ok, err := VerifyPassword(h, "Tr0ub4dor&4"); ok || err != nil {
				t.Fatalf("wrong password: ok=%v err=%v", ok, err)
			}
			if !strings.HasPrefix(want, "{PLAIN") && !strings.HasPrefix(want, "{CLEAR") {
				h2, _ := HashPassword(scheme, "Tr0ub4dor&3")
				if h2 == h {
					t.Fatalf("two hashes of the same password are equal: salt not random")
				}
			}
		})
	}
}

func TestHashPasswordFormats(t *testing.T) {
	h, err := HashPassword("BLF-CRYPT", "x")
	if err != nil || !strings.HasPrefix(h, "{BLF-CRYPT}$2y$") {
		t.Fatalf("BLF-CRYPT = %q, %v; want Dovecot's $2y$", h, err)
	}
	h, err = HashPassword("ARGON2ID", "x")
	if err != nil || !strings.HasPrefix(h, "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$") {
		t.Fatalf("ARGON2ID = %q, %v", h, err)
	}
	h, err = HashPassword("SHA512-CRYPT", "x")
	if err != nil || !strings.HasPrefix(h, "{SHA512-CRYPT}$6$") {
		t.Fatalf("SHA512-CRYPT = %q, %v", h, err)
	}
}

func TestHashPasswordErrors(t *testing.T) {
	tests := []struct{ scheme, password string }{
		{"NOPE", "x"},
		{"CRYPT", "x"}, // ambiguous: which crypt?
		{"PLAIN", "a:b"},
		{"PLAIN", "a\nb"},
		{"BLF-CRYPT", strings.Repeat("x", 73)},
	}
	for _, tt := range tests {
		if h, err := HashPassword(tt.scheme, tt.password); err == nil {
			t.Errorf("HashPassword(%q, %q) = %q, want an error", tt.scheme, tt.password, h)
		}
	}
}

func TestVerifyPasswordBcryptLongPassword(t *testing.T) {
	// A hash made elsewhere from a long password covers its first 72 bytes;
	// other implementations accept the full password, so must we.
	long := strings.Repeat("p", 80)
	h, err := HashPassword("BLF-CRYPT", long[:72])
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := VerifyPassword(h, long); !ok || err != nil {
		t.Fatalf("long password: ok=%v err=%v", ok, err)
	}
}

func TestVerifyPasswordSaltedDigestComputed(t *testing.T) {
	// The SSHA layout (digest then salt), computed here from a fixed salt.
	salt := []byte{0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3}
	for _, tt := range []struct {
		scheme string
		sum    func([]byte) []byte
	}{
		{"SSHA", func(b []byte) []byte { s := sha1.Sum(b); return s[:] }},
		{"SSHA256", func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }},
	} {
		raw := append(tt.sum(append([]byte("pässword"), salt...)), salt...)
		stored := "{" + tt.scheme + "}" + base64.StdEncoding.EncodeToString(raw)
		if ok, err := VerifyPassword(stored, "pässword"); !ok || err != nil {
			t.Errorf("%s right: ok=%v err=%v", tt.scheme, ok, err)
		}
		if ok, err := VerifyPassword(stored, "password"); ok || err != nil {
			t.Errorf("%s wrong: ok=%v err=%v", tt.scheme, ok, err)
		}
	}
}

func TestVerifyPasswordMalformed(t *testing.T) {
	tests := []struct {
		name, stored string
		want         error
	}{
		{"unknown scheme", "{ROT13}frperg", ErrUnknownScheme},
		{"DES crypt", "abJnggxhB/yWI", ErrUnknownScheme},
		{"yescrypt", "$y$j9T$salt$hash", ErrUnknownScheme},
		{"empty stored", "", ErrUnknownScheme},
		{"encoding suffix on crypt", "{SHA512-CRYPT.HEX}$6$a$b", ErrUnknownScheme},
		{"bad encoding suffix", "{SSHA.ROT}abcd", ErrUnknownScheme},
		{"scheme/prefix mismatch", "{SHA512-CRYPT}$1$saltsalt$9xy1btjgzLYfb7hivXtC//", ErrMalformedHash},
		{"sha512 without salt", "{SHA512-CRYPT}$6$", ErrMalformedHash},
		{"sha512 bad rounds", "$6$rounds=abc$salt$hash", ErrMalformedHash},
		{"bcrypt truncated", "{BLF-CRYPT}$2y$10$short", ErrMalformedHash},
		{"bcrypt bad cost", "$2b$99$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a", ErrMalformedHash},
		{"argon2 wrong version", "$argon2id$v=16$m=65536,t=3,p=4$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"argon2 missing field", "$argon2id$v=19$m=65536,t=3,p=4$MIIRqgvgQbgj220jfp0MPA", ErrMalformedHash},
		{"argon2 huge memory", "$argon2id$v=19$m=4294967295,t=3,p=4$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"argon2 zero time", "$argon2id$v=19$m=65536,t=0,p=4$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"argon2 missing p", "$argon2id$v=19$m=65536,t=3$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"argon2 unknown param", "$argon2id$v=19$m=65536,t=3,p=4,x=1$MIIRqgvgQbgj220jfp0MPA$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"argon2 bad base64", "$argon2id$v=19$m=65536,t=3,p=4$!!!!$YfwJSVjtjSU0zzV/P3S9nnQ/USre2wvJMjfCIjrTQbg", ErrMalformedHash},
		{"ssha bad base64", "{SSHA}not base64!", ErrMalformedHash},
		{"ssha too short", "{SSHA}" + base64.StdEncoding.EncodeToString(make([]byte, 10)), ErrMalformedHash},
		{"ssha without salt", "{SSHA}" + base64.StdEncoding.EncodeToString(make([]byte, 20)), ErrMalformedHash},
		{"sha wrong length", "{SHA}" + base64.StdEncoding.EncodeToString(make([]byte, 24)), ErrMalformedHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := VerifyPassword(tt.stored, "secret")
			if ok || !errors.Is(err, tt.want) {
				t.Fatalf("VerifyPassword = %v, %v; want false, %v", ok, err, tt.want)
			}
			// The error is logged by callers: it must not carry the hash.
			if tt.stored != "" {
				_, data := splitScheme(tt.stored)
				if len(data) > 4 && strings.Contains(err.Error(), data) {
					t.Fatalf("error %q contains the stored hash", err)
				}
			}
		})
	}
}

func TestSplitScheme(t *testing.T) {
	tests := []struct{ in, scheme, data string }{
		{"{SSHA}abc", "SSHA", "abc"},
		{"{ssha256.hex}abc", "SSHA256.HEX", "abc"},
		{"$6$x$y", "CRYPT", "$6$x$y"},
		{"{broken", "CRYPT", "{broken"},
		{"{}x", "", "x"}, // an empty scheme, refused later as unknown
	}
	for _, tt := range tests {
		s, d := splitScheme(tt.in)
		if s != tt.scheme || d != tt.data {
			t.Errorf("splitScheme(%q) = %q, %q; want %q, %q", tt.in, s, d, tt.scheme, tt.data)
		}
	}
}

// FuzzVerifyPassword makes sure no stored value can panic the verifier.
func FuzzVerifyPassword(f *testing.F) {
	for _, v := range knownVectors {
		f.Add(v.stored, v.password)
	}
	f.Add("$6$rounds=1000$$", "x")
	f.Add("$1$$", "x")
	f.Fuzz(func(t *testing.T, stored, password string) {
		// Keep the fuzzer away from legitimately slow parameters.
		if strings.Contains(stored, "argon2") || strings.Contains(stored, "$2") || strings.Contains(stored, "rounds=") {
			return
		}
		ok, err := VerifyPassword(stored, password)
		if ok && err != nil {
			t.Fatalf("ok and error together")
		}
	})
}
