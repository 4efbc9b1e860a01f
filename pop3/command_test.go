package pop3

import (
	"bufio"
	"bytes"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		line string
		verb string
		args []string
		rest string
		err  error
	}{
		{line: "STAT", verb: "STAT"},
		{line: "stat", verb: "STAT"},
		{line: "LIST 1", verb: "LIST", args: []string{"1"}, rest: "1"},
		{line: "TOP  1   5 ", verb: "TOP", args: []string{"1", "5"}, rest: " 1   5 "},
		{line: "PASS  two  spaces ", verb: "PASS", args: []string{"two", "spaces"}, rest: " two  spaces "},
		{line: "AUTH PLAIN =", verb: "AUTH", args: []string{"PLAIN", "="}, rest: "PLAIN ="},
		{line: "QUIT ", verb: "QUIT", args: nil, rest: ""},
		{line: "", err: errUnknown},
		{line: " STAT", err: errUnknown},
		{line: "STAT\t", err: errUnknown},
		{line: "STATS", err: errUnknown},
		{line: "APOP a b", err: errUnknown},
		{line: "ST\x00AT", err: errNUL},
		{line: "PASS a\x00b", err: errNUL},
		{line: "ＳＴＡＴ", err: errUnknown},
	} {
		cmd, err := parseCommand([]byte(tc.line))
		if len(cmd.args) == 0 {
			cmd.args = nil
		}
		if err != tc.err {
			t.Errorf("%q: error %v, want %v", tc.line, err, tc.err)
			continue
		}
		if cmd.verb != tc.verb || !reflect.DeepEqual(cmd.args, tc.args) || cmd.rest != tc.rest {
			t.Errorf("%q: %+v", tc.line, cmd)
		}
	}
}

func TestParseMsgNum(t *testing.T) {
	for s, want := range map[string]int{
		"1": 0, "3": 2, "01": 0, "0": -1, "4": -1, "-1": -1, "+1": -1, "": -1, " 1": -1,
		"1 ": -1, "0x1": -1, "１": -1, "99999999999999999999": -1, "18446744073709551617": -1,
	} {
		i, ok := parseMsgNum(s, 3)
		if !ok {
			i = -1
		}
		if i != want {
			t.Errorf("parseMsgNum(%q, 3) = %d, want %d", s, i, want)
		}
	}
	for s, want := range map[string]int64{
		"0": 0, "10": 10, "99999999999999999999": math.MaxInt64, "9223372036854775807": math.MaxInt64,
		"-1": -1, "": -1, "1x": -1, "99999999999999999999x": -1,
	} {
		n, ok := parseLineCount(s)
		if !ok {
			n = -1
		}
		if n != want {
			t.Errorf("parseLineCount(%q) = %d, want %d", s, n, want)
		}
	}
}

// refBody is sendMessage's conversion done the obvious way, on the whole
// message at once.
func refBody(msg string, top int64) string {
	var b strings.Builder
	lines := strings.SplitAfter(msg, "\n")
	inHeader := true
	for _, l := range lines {
		if l == "" {
			continue
		}
		content := strings.TrimSuffix(l, "\n")
		hasLF := len(content) < len(l)
		if hasLF {
			content = strings.TrimSuffix(content, "\r")
		}
		if strings.HasPrefix(content, ".") {
			b.WriteByte('.')
		}
		b.WriteString(content + "\r\n")
		if top < 0 || !hasLF {
			continue
		}
		if inHeader {
			if content == "" {
				inHeader = false
				if top == 0 {
					break
				}
			}
		} else if top--; top == 0 {
			break
		}
	}
	return b.String() + ".\r\n"
}

// TestSendMessage feeds messages to the converter in pieces of every size
// from 1 byte up, so CRLF, dots and the header's end fall on every
// boundary.
func TestSendMessage(t *testing.T) {
	msgs := []string{
		"",
		"a",
		".",
		"\n",
		"\r\n",
		"\r",
		"a\rb\n",
		"Subject: x\n\nbody\n.\n..\n.x\nend",
		"Subject: x\r\n\r\nbody\r\n.\r\nlast\r\n",
		"H: 1\r\nH: 2\n\r\n.a\nb\r\nc\nd",
		"no header end\nat all\n",
		"\n\n\n.\n",
		"A: b\r\n\r\n\r\n\r\nx\r\n",
	}
	srv := New(nil, Options{Hostname: "pop.test"})
	for _, msg := range msgs {
		for _, top := range []int64{-1, 0, 1, 2, 100} {
			want := refBody(msg, top)
			for piece := 1; piece <= len(msg)+1; piece++ {
				var out bytes.Buffer
				ss := &session{s: srv}
				ss.bw = bufio.NewWriter(&out)
				r := &pieceReader{s: msg, n: piece}
				if err := ss.sendMessage(r, top); err != nil {
					t.Fatal(err)
				}
				ss.bw.Flush()
				if out.String() != want {
					t.Fatalf("message %q top %d in pieces of %d:\n got %q\nwant %q", msg, top, piece, out.String(), want)
				}
			}
		}
	}
}

type pieceReader struct {
	s string
	n int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.s)
	r.s = r.s[n:]
	return n, nil
}

func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"CAPA", "USER alice", "PASS secret word", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH LOGIN", "AUTH PLAIN =",
		"STLS", "STAT", "LIST", "LIST 1", "UIDL 2", "RETR 1", "TOP 1 10", "DELE 3", "NOOP", "RSET", "QUIT",
		"RETR 0", "RETR -1", "RETR 99999999999999999999", "TOP 1 99999999999999999999", "list 01",
		"", " ", "\x00", "US\x00ER x", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "ＳＴＡＴ", "TOP\t1 2",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := parseCommand(line)
		if bytes.IndexByte(line, 0) >= 0 {
			if err != errNUL {
				t.Fatalf("%q: NUL accepted (%v)", line, err)
			}
			return
		}
		if err != nil {
			if err != errUnknown || cmd.verb != "" || cmd.args != nil {
				t.Fatalf("%q: %v, %+v", line, err, cmd)
			}
			return
		}
		known := false
		for _, v := range verbs {
			known = known || cmd.verb == v
		}
		if !known || !strings.EqualFold(string(line[:len(cmd.verb)]), cmd.verb) {
			t.Fatalf("%q: verb %q", line, cmd.verb)
		}
		if len(line) > len(cmd.verb) && (line[len(cmd.verb)] != ' ' || cmd.rest != string(line[len(cmd.verb)+1:])) {
			t.Fatalf("%q: rest %q", line, cmd.rest)
		}
		if got := strings.Join(cmd.args, " "); got != strings.Join(strings.FieldsFunc(cmd.rest, func(r rune) bool { return r == ' ' }), " ") {
			t.Fatalf("%q: args %q", line, cmd.args)
		}
		for _, a := range cmd.args {
			if a == "" || strings.Contains(a, " ") {
				t.Fatalf("%q: arg %q", line, a)
			}
			const n = 1000
			if i, ok := parseMsgNum(a, n); ok {
				if i < 0 || i >= n {
					t.Fatalf("parseMsgNum(%q) = %d", a, i)
				}
				for _, c := range []byte(a) {
					if c < '0' || c > '9' {
						t.Fatalf("parseMsgNum(%q) accepted a non-digit", a)
					}
				}
			}
			if v, ok := parseLineCount(a); ok && (v < 0 || !utf8.ValidString(a) || strings.Trim(a, "0123456789") != "") {
				t.Fatalf("parseLineCount(%q) = %d", a, v)
			}
		}
	})
}
