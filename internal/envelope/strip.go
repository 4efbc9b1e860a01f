package envelope

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// StripFields returns a reader that yields r without the header fields
// named names (compared without regard to case), continuation lines
// included: for headers only this system may write, such as a scan
// verdict, so that one a sender forged never reaches a mailbox. The body
// is passed through untouched, and so is everything after MaxHeaderScan
// bytes of header section (no delivery reads further either). Errors from
// r are returned as they are.
func StripFields(r io.Reader, names ...string) io.Reader {
	return &fieldStripper{br: bufio.NewReaderSize(r, 64<<10), names: names, inHeader: true, lineStart: true}
}

type fieldStripper struct {
	br    *bufio.Reader
	names []string
	// inHeader is true until the blank line that ends the header section.
	inHeader bool
	// lineStart is true when the next chunk read begins a line (a line
	// longer than the buffer comes in several chunks).
	lineStart bool
	// dropping is true while inside a field that is being removed.
	dropping bool
	scanned  int
	pending  []byte // bytes of the current chunk not yet returned
	err      error
}

func (f *fieldStripper) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		if !f.inHeader {
			return f.br.Read(p)
		}
		f.nextChunk()
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

// nextChunk reads the next piece of a header line and decides whether it
// is kept (f.pending) or dropped.
func (f *fieldStripper) nextChunk() {
	chunk, err := f.br.ReadSlice('\n')
	if err != nil && err != bufio.ErrBufferFull {
		f.err = err
	}
	if len(chunk) == 0 {
		return
	}
	f.scanned += len(chunk)
	startsLine := f.lineStart
	f.lineStart = err == nil // a complete line read: the next chunk starts one
	if startsLine {
		switch {
		case isBlankLine(chunk):
			f.inHeader, f.dropping = false, false
		case chunk[0] == ' ' || chunk[0] == '\t':
			// A continuation line belongs to the field being read.
		default:
			f.dropping = f.stripped(chunk)
		}
	}
	if f.scanned >= MaxHeaderScan {
		f.inHeader = false
	}
	if f.dropping {
		return
	}
	// ReadSlice's buffer is reused by the next read: keep a copy.
	f.pending = append(f.pending[:0], chunk...)
}

func isBlankLine(line []byte) bool {
	return len(bytes.TrimRight(line, "\r\n")) == 0
}

// stripped reports whether the field starting with line is one to remove.
func (f *fieldStripper) stripped(line []byte) bool {
	name, _, ok := bytes.Cut(line, []byte(":"))
	if !ok {
		return false
	}
	n := strings.TrimSpace(string(name))
	for _, want := range f.names {
		if strings.EqualFold(n, want) {
			return true
		}
	}
	return false
}
