package userdb

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/GehirnInc/crypt"
	"github.com/GehirnInc/crypt/md5_crypt"
	"github.com/GehirnInc/crypt/sha256_crypt"
	"github.com/GehirnInc/crypt/sha512_crypt"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password hashes use Dovecot's notation: "{SCHEME}data", the scheme name
// case-insensitive, and a hash without a prefix taken as {CRYPT} (what
// Dovecot's default_pass_scheme is for a passwd-file). Error messages here
// name the scheme at most, never the hash: callers log them.

// ErrUnknownScheme is returned (wrapped) for a scheme VerifyPassword or
// HashPassword does not implement.
var ErrUnknownScheme = errors.New("unknown password scheme")

// ErrMalformedHash is returned (wrapped) for stored data that does not parse
// as its scheme.
var ErrMalformedHash = errors.New("malformed password hash")

// Limits on argon2 parameters read from a stored hash. The file is written
// by the administrator, but one typo in m= must not make every login
// allocate terabytes.
const (
	argon2MaxMemoryKiB = 4 << 20 // 4 GiB
	argon2MaxTime      = 1 << 10
	argon2MaxKeyLen    = 1 << 10
)

// Parameters for new hashes (HashPassword).
const (
	argon2Memory  = 64 * 1024 // KiB, as in Dovecot/libsodium's moderate limit
	argon2Time    = 3
	argon2Threads = 1
	argon2KeyLen  = 32
	saltLen       = 16
)

// VerifyPassword reports whether password matches the stored hash. The error
// is non-nil (and the result false) for an unknown scheme or a hash that
// does not parse; the caller must treat that as a failed login and log it
// without the stored value.
func VerifyPassword(stored, password string) (bool, error) {
	scheme, data := splitScheme(stored)
	base, enc, _ := strings.Cut(scheme, ".")
	if enc != "" {
		// Dovecot lets the digest schemes pick their encoding with a
		// suffix ({SSHA256.HEX}); nothing else takes one.
		if _, ok := digestScheme(base); !ok {
			return false, fmt.Errorf("%w: %s", ErrUnknownScheme, scheme)
		}
	}
	pw := []byte(password)
	switch base {
	case "CRYPT":
		return verifyCrypt(data, pw)
	case "SHA512-CRYPT":
		return verifyPrefixed(data, pw, "$6$", scheme)
	case "SHA256-CRYPT":
		return verifyPrefixed(data, pw, "$5$", scheme)
	case "MD5-CRYPT":
		return verifyPrefixed(data, pw, "$1$", scheme)
	case "BLF-CRYPT":
		return verifyPrefixed(data, pw, "$2", scheme)
	case "ARGON2ID":
		return verifyPrefixed(data, pw, "$argon2id$", scheme)
	case "ARGON2I":
		return verifyPrefixed(data, pw, "$argon2i$", scheme)
	case "PLAIN", "CLEAR":
		return equalSecret(data, pw), nil
	}
	if d, ok := digestScheme(base); ok {
		return verifyDigest(d, enc, data, pw, scheme)
	}
	return false, fmt.Errorf("%w: %s", ErrUnknownScheme, scheme)
}

// splitScheme separates "{SCHEME}data"; no prefix means {CRYPT}.
func splitScheme(stored string) (scheme, data string) {
	if strings.HasPrefix(stored, "{") {
		if end := strings.IndexByte(stored, '}'); end > 0 {
			return strings.ToUpper(stored[1:end]), stored[end+1:]
		}
	}
	return "CRYPT", stored
}

// verifyPrefixed checks that data really is of the scheme its {PREFIX}
// claims before dispatching on it, so "{SHA512-CRYPT}$1$..." is reported as
// malformed instead of silently verified as MD5-crypt.
func verifyPrefixed(data string, pw []byte, prefix, scheme string) (bool, error) {
	if !strings.HasPrefix(data, prefix) {
		return false, fmt.Errorf("%w: %s data has the wrong prefix", ErrMalformedHash, scheme)
	}
	return verifyCrypt(data, pw)
}

// verifyCrypt dispatches a crypt(3)-style hash on its $id$ prefix.
func verifyCrypt(data string, pw []byte) (bool, error) {
	switch {
	case strings.HasPrefix(data, "$6$"):
		return verifyGehirn(sha512_crypt.New(), data, pw)
	case strings.HasPrefix(data, "$5$"):
		return verifyGehirn(sha256_crypt.New(), data, pw)
	case strings.HasPrefix(data, "$1$"):
		return verifyGehirn(md5_crypt.New(), data, pw)
	case strings.HasPrefix(data, "$2a$"), strings.HasPrefix(data, "$2b$"), strings.HasPrefix(data, "$2y$"):
		return verifyBcrypt(data, pw)
	case strings.HasPrefix(data, "$argon2id$"):
		return verifyArgon2(data, pw, true)
	case strings.HasPrefix(data, "$argon2i$"):
		return verifyArgon2(data, pw, false)
	}
	// Traditional DES crypt, $y$ (yescrypt) and $7$ (scrypt) are not
	// implemented; say so rather than fail as a wrong password.
	return false, fmt.Errorf("%w: CRYPT variant not supported", ErrUnknownScheme)
}

// verifyGehirn recomputes the hash with the stored salt and rounds and
// compares in constant time. Calling Generate rather than Verify lets us
// tell a malformed hash (error) from a wrong password (false).
func verifyGehirn(c crypt.Crypter, data string, pw []byte) (ok bool, err error) {
	// The library indexes into its input; a panic on some malformed hash
	// must not take the whole daemon down with it.
	defer func() {
		if recover() != nil {
			ok, err = false, fmt.Errorf("%w: crypt hash does not parse", ErrMalformedHash)
		}
	}()
	if strings.Count(data, "$") < 3 {
		return false, fmt.Errorf("%w: crypt hash has no salt", ErrMalformedHash)
	}
	got, err := c.Generate(pw, []byte(data))
	if err != nil {
		return false, fmt.Errorf("%w: crypt hash does not parse", ErrMalformedHash)
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(data)) == 1, nil
}

// bcryptMaxPassword is the number of password bytes bcrypt uses.
const bcryptMaxPassword = 72

// verifyBcrypt handles $2a$, $2b$ and $2y$. Dovecot (via crypt_blowfish)
// writes $2y$; all three are the same algorithm for passwords without
// 8-bit bugs, and x/crypto/bcrypt only claims $2a$/$2b$, so rewrite the
// prefix.
func verifyBcrypt(data string, pw []byte) (bool, error) {
	if strings.HasPrefix(data, "$2y$") {
		data = "$2b$" + data[4:]
	}
	// Every other bcrypt implementation (Dovecot's included) silently uses
	// the first 72 bytes; do the same so long passwords set elsewhere work.
	if len(pw) > bcryptMaxPassword {
		pw = pw[:bcryptMaxPassword]
	}
	err := bcrypt.CompareHashAndPassword([]byte(data), pw)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return false, nil
	}
	return false, fmt.Errorf("%w: bcrypt hash does not parse", ErrMalformedHash)
}

// verifyArgon2 checks a PHC string: $argon2id$v=19$m=65536,t=3,p=1$salt$hash
// with unpadded standard base64, as written by Dovecot (libsodium) and the
// argon2 reference tool.
func verifyArgon2(data string, pw []byte, id bool) (bool, error) {
	malformed := func(what string) (bool, error) {
		return false, fmt.Errorf("%w: argon2 %s", ErrMalformedHash, what)
	}
	parts := strings.Split(data, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[0] != "" {
		return malformed("hash does not have six fields")
	}
	if parts[2] != "v=19" {
		// Version 0x10 predates the PHC format with v=; x/crypto only
		// implements 0x13.
		return malformed("version is not 19")
	}
	var m, t, p uint64
	var seen [3]bool
	for kv := range strings.SplitSeq(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return malformed("parameter is not a number")
		}
		switch k {
		case "m":
			m, seen[0] = n, true
		case "t":
			t, seen[1] = n, true
		case "p":
			p, seen[2] = n, true
		default:
			return malformed("unknown parameter")
		}
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return malformed("parameter missing")
	}
	if t < 1 || t > argon2MaxTime || p < 1 || p > 255 || m < 8*p || m > argon2MaxMemoryKiB {
		return malformed("parameter out of range")
	}
	salt, err := decodeB64(parts[4])
	if err != nil || len(salt) < 8 {
		return malformed("salt does not decode")
	}
	want, err := decodeB64(parts[5])
	if err != nil || len(want) < 4 || len(want) > argon2MaxKeyLen {
		return malformed("hash does not decode")
	}
	var got []byte
	if id {
		got = argon2.IDKey(pw, salt, uint32(t), uint32(m), uint8(p), uint32(len(want)))
	} else {
		got = argon2.Key(pw, salt, uint32(t), uint32(m), uint8(p), uint32(len(want)))
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// decodeB64 accepts standard base64 with or without padding: the PHC format
// omits it, some tools add it.
func decodeB64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// digest describes the {SHA}/{SSHA*} family: base64 (or hex) of
// H(password+salt)+salt; the unsalted ones have no salt.
type digest struct {
	newHash func() hash.Hash
	size    int
	salted  bool
}

// digestScheme returns the digest scheme called name. A switch rather than
// a package-level map keeps the package free of mutable globals.
func digestScheme(name string) (digest, bool) {
	switch name {
	case "SHA", "SHA1":
		return digest{sha1.New, sha1.Size, false}, true
	case "SHA256":
		return digest{sha256.New, sha256.Size, false}, true
	case "SHA512":
		return digest{sha512.New, sha512.Size, false}, true
	case "SSHA":
		return digest{sha1.New, sha1.Size, true}, true
	case "SSHA256":
		return digest{sha256.New, sha256.Size, true}, true
	case "SSHA512":
		return digest{sha512.New, sha512.Size, true}, true
	}
	return digest{}, false
}

func verifyDigest(d digest, enc, data string, pw []byte, scheme string) (bool, error) {
	var raw []byte
	var err error
	switch enc {
	case "", "B64", "BASE64":
		raw, err = base64.StdEncoding.DecodeString(data)
	case "HEX":
		raw, err = hex.DecodeString(data)
	default:
		return false, fmt.Errorf("%w: %s", ErrUnknownScheme, scheme)
	}
	if err != nil {
		return false, fmt.Errorf("%w: %s data does not decode", ErrMalformedHash, scheme)
	}
	if len(raw) < d.size || (!d.salted && len(raw) != d.size) || (d.salted && len(raw) == d.size) {
		return false, fmt.Errorf("%w: %s data has the wrong length", ErrMalformedHash, scheme)
	}
	h := d.newHash()
	h.Write(pw)
	h.Write(raw[d.size:]) // the salt; empty for unsalted schemes
	return subtle.ConstantTimeCompare(h.Sum(nil), raw[:d.size]) == 1, nil
}

// equalSecret compares a plain-text password in constant time. Comparing
// the strings directly would leak the stored length (ConstantTimeCompare
// returns early on a length mismatch); comparing fixed-size digests does not.
func equalSecret(stored string, pw []byte) bool {
	a := sha256.Sum256([]byte(stored))
	b := sha256.Sum256(pw)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// HashPassword hashes password with scheme and returns "{SCHEME}data", ready
// for a passwd-file. Supported: SHA512-CRYPT, SHA256-CRYPT, MD5-CRYPT,
// BLF-CRYPT, ARGON2ID, ARGON2I, SSHA, SSHA256, SSHA512, PLAIN and CLEAR.
// The scheme may be given with or without braces, in any case.
func HashPassword(scheme, password string) (string, error) {
	scheme = strings.ToUpper(strings.TrimSuffix(strings.TrimPrefix(scheme, "{"), "}"))
	pw := []byte(password)
	var data string
	var err error
	switch scheme {
	case "SHA512-CRYPT":
		data, err = sha512_crypt.New().Generate(pw, nil)
	case "SHA256-CRYPT":
		data, err = sha256_crypt.New().Generate(pw, nil)
	case "MD5-CRYPT":
		data, err = md5_crypt.New().Generate(pw, nil)
	case "BLF-CRYPT":
		var h []byte
		h, err = bcrypt.GenerateFromPassword(pw, bcrypt.DefaultCost)
		if err == nil {
			// Write what Dovecot writes, so the file stays usable by
			// Dovecot's own tools; VerifyPassword accepts all three.
			data = "$2y$" + strings.TrimPrefix(strings.TrimPrefix(string(h), "$2a$"), "$2b$")
		}
	case "ARGON2ID", "ARGON2I":
		salt := make([]byte, saltLen)
		rand.Read(salt)
		var key []byte
		name := "argon2id"
		if scheme == "ARGON2ID" {
			key = argon2.IDKey(pw, salt, argon2Time, argon2Memory, argon2Threads, argon2KeyLen)
		} else {
			name = "argon2i"
			key = argon2.Key(pw, salt, argon2Time, argon2Memory, argon2Threads, argon2KeyLen)
		}
		data = fmt.Sprintf("$%s$v=19$m=%d,t=%d,p=%d$%s$%s", name, argon2Memory, argon2Time, argon2Threads,
			base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	case "SSHA", "SSHA256", "SSHA512":
		d, _ := digestScheme(scheme)
		salt := make([]byte, 8)
		rand.Read(salt)
		h := d.newHash()
		h.Write(pw)
		h.Write(salt)
		data = base64.StdEncoding.EncodeToString(append(h.Sum(nil), salt...))
	case "PLAIN", "CLEAR":
		// The passwd-file is line- and colon-separated; a password with
		// either could not be read back.
		if strings.ContainsAny(password, ":\n\r") {
			return "", fmt.Errorf("a %s password cannot contain ':' or a line break", scheme)
		}
		data = password
	default:
		return "", fmt.Errorf("%w: %s", ErrUnknownScheme, scheme)
	}
	if err != nil {
		return "", fmt.Errorf("hash password with %s: %w", scheme, err)
	}
	return "{" + scheme + "}" + data, nil
}
