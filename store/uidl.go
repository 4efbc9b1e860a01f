package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/nfsdrop/nfsdrop/store/failure"
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

func newLegacyUIDLs() *legacyUIDLs {
	return &legacyUIDLs{uidl: map[string]string{}, size: map[string]int64{}}
}

// legacyListName is the file in a Maildir where the server format stands
// for kept its UIDLs; "" for formats without one.
func legacyListName(format string) string {
	switch format {
	case UIDLDovecot:
		return "dovecot-uidlist"
	case UIDLCourier:
		return "courierpop3dsizelist"
	}
	return ""
}

// snapshotName is the file in a Maildir where nfsdrop records, once, the
// legacy UIDLs of format (see frozenLegacyUIDLs).
func snapshotName(format string) string { return "nfsdrop-uidls." + format }

// snapshotMagic starts the first line of a snapshot; a line holding only
// "." ends it, so a file cut short is never taken for a whole one.
const snapshotMagic = "nfsdrop-uidls 1"

// maxLegacyListSize bounds what is read of a legacy list or a snapshot (a
// Dovecot list of a mailbox with 200,000 messages is about 20 MB).
const maxLegacyListSize = 64 << 20

// frozenLegacyUIDLs returns the legacy UIDLs that listings of mb with
// format use: nil for the "maildir" format.
//
// A UIDL once shown never changes (docs/store.md, "POP3 sessions"), but the
// old server's list keeps changing when that server stays on the Maildirs:
// Dovecot IMAP appends every message it sees to dovecot-uidlist, nfsdrop's
// deliveries included, and rebuilds the list with a new UIDVALIDITY when
// it finds it broken; Courier's pop3d, switched back on, adds the messages
// it lists to courierpop3dsizelist. So the first time any machine lists
// the Maildir, it records the list as it is then — the messages the old
// server knew before nfsdrop took over — in snapshotName(format), and
// from then on every machine answers from that record alone: a message
// the old server lists only later keeps the base name nfsdrop gave it. A
// Maildir without a list at that moment gets an empty record. The record
// is written in tmp/ and published with link(), so it is complete when it
// appears and the first machine to publish wins; a machine that loses
// answers from the winner's record, not its own reading.
//
// frozen is false when the old list has complete lines that do not parse:
// the entries that parsed are returned, nothing is recorded (the file may
// be fixed), and the caller must not cache the listing. An unterminated
// last line is an entry being appended (over NFS a reader can see part of
// it): it is left out, as a message the old server had not finished
// recording. Errors are temporary *failure.Error values: a list that
// cannot be read must not turn into base names, which would change UIDLs.
func (s *Store) frozenLegacyUIDLs(mb Mailbox, format string) (l *legacyUIDLs, frozen bool, err error) {
	list := legacyListName(format)
	if list == "" {
		return nil, true, nil
	}
	if l, err := s.readSnapshot(mb, format); err != nil || l != nil {
		return l, err == nil, err
	}
	live, header, clean, err := s.readLegacyList(mb, format)
	if err != nil {
		return nil, false, err
	}
	if !clean {
		s.log.Warn("legacy UIDL list has lines that do not parse: its UIDLs are used but not recorded, and listings are not cached, until it is fixed",
			"maildir", mb.Path, "file", list)
		return live, false, nil
	}
	return s.recordSnapshot(mb, format, header, live)
}

// readLegacyList reads and parses the old server's list. A list that does
// not exist gives an empty result with header "none".
func (s *Store) readLegacyList(mb Mailbox, format string) (l *legacyUIDLs, header string, clean bool, err error) {
	name := legacyListName(format)
	data, exists, err := s.readLegacyFile(mb, name)
	if err != nil {
		return nil, "", false, s.classify("read "+name, err)
	}
	if !exists {
		return newLegacyUIDLs(), "none", true, nil
	}
	if format == UIDLDovecot {
		l, header, clean, err = parseDovecotUIDList(data)
	} else {
		l, header, clean, err = parseCourierSizeList(data)
	}
	if err != nil {
		return nil, "", false, failure.Temp("read "+name, "legacy UIDL list unreadable", err)
	}
	return l, header, clean, nil
}

// readLegacyFile reads name in mb's Maildir whole. exists is false only when a
// fresh read of the directory confirms the file is absent: the empty
// record made from "no list" is permanent, and an NFS client may answer
// ENOENT from a stale name cache.
func (s *Store) readLegacyFile(mb Mailbox, name string) (data []byte, exists bool, err error) {
	path := mb.at(name)
	for attempt := 0; attempt < 3; attempt++ {
		err = s.retryStale(func() error { var e error; data, e = s.readWhole(path); return e })
		if err == nil {
			return data, true, nil
		}
		if !isErrno(err, syscall.ENOENT) {
			return nil, false, err
		}
		var names []string
		if derr := s.retryStale(func() error { var e error; names, e = s.fs.ReadDirNames(mb.at()); return e }); derr != nil {
			return nil, false, derr
		}
		if !slices.Contains(names, name) {
			return nil, false, nil
		}
		// Listed but not found: replaced (rename over) meanwhile. Again.
	}
	return nil, false, err
}

// readWhole reads a file through a fresh open (close-to-open consistency
// on NFS), at most maxLegacyListSize bytes.
func (s *Store) readWhole(path string) ([]byte, error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxLegacyListSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxLegacyListSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxLegacyListSize)
	}
	return data, nil
}

// readSnapshot reads the record of format's legacy UIDLs; nil, nil when
// there is none yet.
func (s *Store) readSnapshot(mb Mailbox, format string) (*legacyUIDLs, error) {
	path := mb.at(snapshotName(format))
	var data []byte
	err := s.retryStale(func() error { var e error; data, e = s.readWhole(path); return e })
	if isErrno(err, syscall.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, s.classify("read UIDL record", err)
	}
	l, err := parseSnapshot(data, format)
	if err != nil {
		// Being written by a machine on a filer without hard links, or
		// damaged: never guess UIDLs. An administrator can see it here.
		s.log.Warn("UIDL record unreadable", "path", filepath.Join(mb.Path, snapshotName(format)), "err", err)
		return nil, failure.Temp("read UIDL record", "UIDL record unreadable", err)
	}
	return l, nil
}

// recordSnapshot publishes live as the Maildir's record of format's
// legacy UIDLs, or adopts the record another machine published first.
func (s *Store) recordSnapshot(mb Mailbox, format, header string, live *legacyUIDLs) (*legacyUIDLs, bool, error) {
	content := formatSnapshot(format, header, live)
	dst := mb.at(snapshotName(format))
	tmpBase := s.newBase() + ".uidls"
	tmp := mb.at("tmp", tmpBase)
	info, err := s.writeDurable(tmp, content, mb)
	if err != nil {
		return nil, false, s.classify("record UIDLs", err)
	}
	_, err = s.publishLink(tmp, info, info.Nlink, dst)
	if rerr := s.retryStale(func() error { return s.fs.Remove(tmp) }); rerr != nil && !isErrno(rerr, syscall.ENOENT) {
		s.log.Warn("could not remove a UIDL record's tmp file; the sweeper will", "path", filepath.Join(mb.Path, "tmp", tmpBase), "err", rerr)
	}
	if isErrno(err, syscall.EPERM) {
		// A filer without hard links: create the record in place. A
		// reader may meet it half written; it has no end line then and
		// is refused (a temporary failure) until it is complete.
		_, err = s.writeDurable(dst, content, mb)
	}
	switch {
	case err == nil:
	case isErrno(err, syscall.EEXIST):
		l, rerr := s.readSnapshot(mb, format)
		if rerr == nil && l == nil {
			rerr = failure.Temp("read UIDL record", "UIDL record vanished", err)
		}
		return l, rerr == nil, rerr
	default:
		return nil, false, s.classify("record UIDLs", err)
	}
	if err := s.syncDir(mb, ""); err != nil {
		return nil, false, s.classify("record UIDLs", err)
	}
	s.log.Info("recorded the legacy UIDLs of a Maildir", "maildir", mb.Path, "format", format, "source", header, "messages", len(live.uidl))
	return live, true, nil
}

// writeDurable creates path (O_EXCL), writes data, fsyncs and closes it,
// checking every step (NFS reports write errors at fsync or close).
func (s *Store) writeDurable(path string, data []byte, mb Mailbox) (_ Info, err error) {
	f, err := s.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Info{}, err
	}
	defer func() {
		if err != nil {
			s.fs.Remove(path)
		}
	}()
	if s.chown && (mb.UID >= 0 || mb.GID >= 0) {
		if err := f.Chown(mb.UID, mb.GID); err != nil {
			f.Close()
			return Info{}, err
		}
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	var info Info
	if err == nil {
		info, err = f.Stat()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return info, err
}

// formatSnapshot writes a record:
//
//	nfsdrop-uidls 1 dovecot V1276528487 N4
//	000000014C164767 1394 1276528487.M364837P9451.kurkku
//	0000abcd-legacy - 1276528489.M12P9453.kurkku
//	.
//
// The first line names the source (the old list's header, or "none");
// each entry is UIDL, CRLF size ("-" when unknown) and base name, last
// because only it may hold spaces.
func formatSnapshot(format, header string, l *legacyUIDLs) []byte {
	bases := make([]string, 0, len(l.uidl))
	for b := range l.uidl {
		bases = append(bases, b)
	}
	sort.Strings(bases)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\n", snapshotMagic, format, header)
	for _, base := range bases {
		size := "-"
		if n, ok := l.size[base]; ok {
			size = strconv.FormatInt(n, 10)
		}
		fmt.Fprintf(&b, "%s %s %s\n", l.uidl[base], size, base)
	}
	b.WriteString(".\n")
	return b.Bytes()
}

func parseSnapshot(data []byte, format string) (*legacyUIDLs, error) {
	lines, torn := completeLines(data)
	if torn || len(lines) < 2 || lines[len(lines)-1] != "." {
		return nil, errors.New("incomplete")
	}
	if !strings.HasPrefix(lines[0], snapshotMagic+" "+format+" ") {
		return nil, fmt.Errorf("unknown first line %q", lines[0])
	}
	l := newLegacyUIDLs()
	for _, line := range lines[1 : len(lines)-1] {
		uidl, rest, ok1 := strings.Cut(line, " ")
		size, base, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 || !validUIDL(uidl) || base == "" {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		if size != "-" {
			n, err := strconv.ParseInt(size, 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("malformed line %q", line)
			}
			l.size[base] = n
		}
		l.uidl[base] = uidl
	}
	return l, nil
}

// completeLines splits data into lines; an unterminated last line is left
// out and reported as torn.
func completeLines(data []byte) (lines []string, torn bool) {
	text := string(data)
	if i := strings.LastIndexByte(text, '\n'); i < len(text)-1 {
		torn = true
		text = text[:i+1]
	}
	if text == "" {
		return nil, torn
	}
	return strings.Split(strings.TrimSuffix(text, "\n"), "\n"), torn
}

// parseDovecotUIDList reads Dovecot's maildir uidlist (version 3, or the
// old version 1):
//
//	3 V1276528487 N3 G...
//	1 W1394 S1355 :1276528487.M364837P9451.host,S=1355,W=1394
//	2 P0000000162b1a2f7 :1276528488.M1P2.host
//
// The UIDL is the P extension when present (pop3_save_uidl), otherwise
// %08X of the uid followed by %08X of the uidvalidity (the default
// pop3_uidl_format "%08Xu%08Xv"). header is the first line's V and N (for
// the record); clean is false when a complete line did not parse.
func parseDovecotUIDList(data []byte) (l *legacyUIDLs, header string, clean bool, err error) {
	lines, _ := completeLines(data)
	if len(lines) == 0 {
		return nil, "", false, errors.New("dovecot-uidlist: no header line")
	}
	hdr := strings.Fields(lines[0])
	if len(hdr) == 0 || (hdr[0] != "3" && hdr[0] != "1") {
		return nil, "", false, fmt.Errorf("dovecot-uidlist: unsupported version line %q", lines[0])
	}
	var uidValidity uint64
	var vOK bool
	var next string
	if hdr[0] == "1" && len(hdr) >= 3 {
		// Version 1: "1 <uidvalidity> <nextuid>".
		uidValidity, err = strconv.ParseUint(hdr[1], 10, 32)
		vOK, next = err == nil, hdr[2]
	}
	for _, f := range hdr[1:] {
		switch {
		case strings.HasPrefix(f, "V"):
			uidValidity, err = strconv.ParseUint(f[1:], 10, 32)
			vOK = err == nil
		case strings.HasPrefix(f, "N"):
			next = f[1:]
		}
	}
	if !vOK {
		return nil, "", false, fmt.Errorf("dovecot-uidlist: no UIDVALIDITY in %q", lines[0])
	}
	l, clean = newLegacyUIDLs(), true
	for _, line := range lines[1:] {
		if !parseDovecotLine(line, uidValidity, l) {
			clean = false
		}
	}
	return l, fmt.Sprintf("V%d N%s", uidValidity, next), clean, nil
}

// parseDovecotLine adds one uidlist record to l; false when it does not
// parse.
func parseDovecotLine(line string, uidValidity uint64, l *legacyUIDLs) bool {
	var fields []string
	var fname string
	if i := strings.Index(line, " :"); i >= 0 {
		fields, fname = strings.Fields(line[:i]), line[i+2:]
	} else {
		// Version 1 lines: "<uid> <filename>".
		parts := strings.Fields(line)
		if len(parts) != 2 {
			return false
		}
		fields, fname = parts[:1], parts[1]
	}
	if len(fields) == 0 || fname == "" {
		return false
	}
	uid, err := strconv.ParseUint(fields[0], 10, 32)
	if err != nil || uid == 0 {
		return false
	}
	uidl := fmt.Sprintf("%08X%08X", uid, uidValidity)
	base := BaseName(fname)
	for _, ext := range fields[1:] {
		switch {
		case strings.HasPrefix(ext, "P") && validUIDL(ext[1:]):
			uidl = ext[1:]
		case strings.HasPrefix(ext, "W"):
			if n, err := strconv.ParseInt(ext[1:], 10, 64); err == nil {
				l.size[base] = n
			}
		}
	}
	l.uidl[base] = uidl
	return true
}

// parseCourierSizeList reads Courier's courierpop3dsizelist (versions 2
// and 3):
//
//	/3 <nextuid> <uidv>
//	<filename> <crlf size> <uid>:<uidv>[:<utf8>]
//
// The UIDL Courier answers is "UID<uid>-<uidv>" ("UID<uid>" when uidv is
// 0), and the size is already the CRLF size. A list without a "/" header
// is Courier's version 0, whose UIDLs were base names: it gives no legacy
// UIDLs.
func parseCourierSizeList(data []byte) (l *legacyUIDLs, header string, clean bool, err error) {
	lines, _ := completeLines(data)
	if len(lines) == 0 {
		return nil, "", false, errors.New("courierpop3dsizelist: no header line")
	}
	l, clean = newLegacyUIDLs(), true
	switch {
	case !strings.HasPrefix(lines[0], "/"):
		return l, "version 0", true, nil
	case !strings.HasPrefix(lines[0], "/2") && !strings.HasPrefix(lines[0], "/3"):
		return nil, "", false, fmt.Errorf("courierpop3dsizelist: unsupported version line %q", lines[0])
	}
	for _, line := range lines[1:] {
		if !parseCourierLine(line, l) {
			clean = false
		}
	}
	return l, lines[0], clean, nil
}

// parseCourierLine adds one sizelist record to l; false when it does not
// parse.
func parseCourierLine(line string, l *legacyUIDLs) bool {
	// The file name may contain spaces: the last two fields are the size
	// and the uid, as Courier parses it.
	j := strings.LastIndexByte(line, ' ')
	if j < 0 {
		return false
	}
	i := strings.LastIndexByte(line[:j], ' ')
	if i <= 0 {
		return false
	}
	fname, sizeStr, uidStr := line[:i], line[i+1:j], line[j+1:]
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil {
		return false
	}
	parts := strings.Split(uidStr, ":")
	n, err := strconv.ParseUint(parts[0], 10, 64)
	if err != nil || n == 0 {
		return false
	}
	uidl := "UID" + strconv.FormatUint(n, 10)
	if len(parts) > 1 && parts[1] != "0" {
		uidl += "-" + parts[1]
	}
	base := BaseName(fname)
	l.uidl[base] = uidl
	l.size[base] = size
	return true
}
