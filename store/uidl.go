package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// UIDL formats (pop3.uidl_format).
const (
	// UIDLMaildir answers the Maildir base name, as qmail-pop3d and
	// Courier (version 0 lists) do.
	UIDLMaildir = "maildir"
	// UIDLDovecot answers the UIDLs Dovecot 2.3 gave with its default
	// pop3_uidl_format %08Xu%08Xv (or a saved P extension) for messages
	// listed in dovecot-uidlist, and the base name for newer ones.
	UIDLDovecot = "dovecot"
	// UIDLCourier answers Courier's "UID<n>-<uidv>" for messages listed in
	// courierpop3dsizelist, and the base name for newer ones.
	UIDLCourier = "courier"
)

// validUIDL reports whether u obeys RFC 1939 section 7: 1 to 70
// characters in 0x21..0x7E.
func validUIDL(u string) bool {
	if len(u) == 0 || len(u) > MaxUIDLLen {
		return false
	}
	for i := 0; i < len(u); i++ {
		if u[i] < 0x21 || u[i] > 0x7e {
			return false
		}
	}
	return true
}

// derivedUIDL is the UIDL of a message whose base name cannot be one (too
// long, or with bytes outside 0x21..0x7E): a hash of the base name, so it
// is the same on every machine and in every session.
func derivedUIDL(base string) string {
	sum := sha256.Sum256([]byte(base))
	return "H" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:20]))
}

// uidlOf is the default UIDL of a Maildir file name.
func uidlOf(name string) string {
	base := BaseName(name)
	if validUIDL(base) {
		return base
	}
	return derivedUIDL(base)
}

// legacyUIDLs maps base names to the UIDLs another server gave them, and
// CRLF sizes where that server recorded them.
type legacyUIDLs struct {
	uidl map[string]string
	size map[string]int64
}

// readLegacyUIDLs reads dovecot-uidlist or courierpop3dsizelist (per
// format) from a Maildir. A missing file is no error; a malformed line is
// skipped (its message then gets the default UIDL).
func (s *Store) readLegacyUIDLs(maildir, format string) (*legacyUIDLs, error) {
	var name string
	switch format {
	case UIDLDovecot:
		name = "dovecot-uidlist"
	case UIDLCourier:
		name = "courierpop3dsizelist"
	default:
		return nil, nil
	}
	f, err := s.fs.OpenFile(filepath.Join(maildir, name), os.O_RDONLY, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, s.classify("read "+name, err)
	}
	defer f.Close()
	if format == UIDLDovecot {
		return parseDovecotUIDList(f)
	}
	return parseCourierSizeList(f)
}

// parseDovecotUIDList reads Dovecot's maildir uidlist (version 3):
//
//	3 V1276528487 N3 G...
//	1 W1394 S1355 :1276528487.M364837P9451.host,S=1355,W=1394
//	2 P0000000162b1a2f7 :1276528488.M1P2.host
//
// The UIDL is the P extension when present (pop3_save_uidl), otherwise
// %08X of the uid followed by %08X of the uidvalidity (the default
// pop3_uidl_format "%08Xu%08Xv").
func parseDovecotUIDList(r interface{ Read([]byte) (int, error) }) (*legacyUIDLs, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return nil, nil
	}
	var uidValidity uint64
	hdr := strings.Fields(sc.Text())
	if len(hdr) == 0 || (hdr[0] != "3" && hdr[0] != "1") {
		return nil, fmt.Errorf("dovecot-uidlist: unsupported version line %q", sc.Text())
	}
	if hdr[0] == "1" && len(hdr) >= 2 {
		// Version 1: "1 <uidvalidity> <nextuid>".
		uidValidity, _ = strconv.ParseUint(hdr[1], 10, 32)
	}
	for _, f := range hdr[1:] {
		if strings.HasPrefix(f, "V") {
			uidValidity, _ = strconv.ParseUint(f[1:], 10, 32)
		}
	}
	out := &legacyUIDLs{uidl: map[string]string{}, size: map[string]int64{}}
	for sc.Scan() {
		line := sc.Text()
		var fields []string
		var fname string
		if i := strings.Index(line, " :"); i >= 0 {
			fields, fname = strings.Fields(line[:i]), line[i+2:]
		} else {
			// Version 1 lines: "<uid> <filename>".
			parts := strings.Fields(line)
			if len(parts) != 2 {
				continue
			}
			fields, fname = parts[:1], parts[1]
		}
		if len(fields) == 0 || fname == "" {
			continue
		}
		uid, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil {
			continue
		}
		uidl := fmt.Sprintf("%08X%08X", uid, uidValidity)
		base := BaseName(fname)
		for _, ext := range fields[1:] {
			switch {
			case strings.HasPrefix(ext, "P") && validUIDL(ext[1:]):
				uidl = ext[1:]
			case strings.HasPrefix(ext, "W"):
				if n, err := strconv.ParseInt(ext[1:], 10, 64); err == nil {
					out.size[base] = n
				}
			}
		}
		out.uidl[base] = uidl
	}
	return out, sc.Err()
}

// parseCourierSizeList reads Courier's courierpop3dsizelist (versions 2
// and 3):
//
//	/3 <nextuid> <uidv>
//	<filename> <crlf size> <uid>:<uidv>[:<utf8>]
//
// The UIDL Courier answers is "UID<uid>-<uidv>" ("UID<uid>" when uidv is
// 0), and the size is already the CRLF size.
func parseCourierSizeList(r interface{ Read([]byte) (int, error) }) (*legacyUIDLs, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return nil, nil
	}
	if !strings.HasPrefix(sc.Text(), "/2") && !strings.HasPrefix(sc.Text(), "/3") {
		return nil, fmt.Errorf("courierpop3dsizelist: unsupported version line %q", sc.Text())
	}
	out := &legacyUIDLs{uidl: map[string]string{}, size: map[string]int64{}}
	for sc.Scan() {
		line := sc.Bytes()
		// The file name may contain spaces: the last two fields are the
		// size and the uid, as Courier parses it.
		j := bytes.LastIndexByte(line, ' ')
		if j < 0 {
			continue
		}
		i := bytes.LastIndexByte(line[:j], ' ')
		if i <= 0 {
			continue
		}
		fname, sizeStr, uidStr := string(line[:i]), string(line[i+1:j]), string(line[j+1:])
		size, err := strconv.ParseInt(sizeStr, 10, 64)
		if err != nil {
			continue
		}
		parts := strings.Split(uidStr, ":")
		n, err := strconv.ParseUint(parts[0], 10, 64)
		if err != nil || n == 0 {
			continue
		}
		uidl := "UID" + strconv.FormatUint(n, 10)
		if len(parts) > 1 && parts[1] != "0" {
			uidl += "-" + parts[1]
		}
		if k := strings.IndexByte(fname, ':'); k >= 0 {
			fname = fname[:k]
		}
		base := BaseName(fname)
		out.uidl[base] = uidl
		out.size[base] = size
	}
	return out, sc.Err()
}
