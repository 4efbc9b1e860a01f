package envelope

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestStripFields(t *testing.T) {
	long := strings.Repeat("x", 70<<10) // longer than the read buffer
	cases := []struct{ name, in, want string }{
		{"plain", "A: 1\r\nX-Virus-Status: Clean\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\nbody\r\n"},
		{"folded, any case, space before colon",
			"x-virus-STATUS : Clean\r\n\tfolded\r\n more\r\nB: 2\r\n\r\nbody\r\n", "B: 2\r\n\r\nbody\r\n"},
		{"first and last", "X-Virus-Status: a\nA: 1\nX-Virus-Status: b\n\nbody\n", "A: 1\n\nbody\n"},
		{"body untouched", "A: 1\r\n\r\nX-Virus-Status: Clean\r\n", "A: 1\r\n\r\nX-Virus-Status: Clean\r\n"},
		{"similar names kept", "X-Virus-Status-Old: 1\r\nX-Virus: 2\r\n\r\n", "X-Virus-Status-Old: 1\r\nX-Virus: 2\r\n\r\n"},
		{"no body, no blank line", "A: 1\r\nX-Virus-Status: Clean", "A: 1\r\n"},
		{"a line longer than the buffer", "X-Virus-Status: " + long + "\r\nA: " + long + "\r\n\r\nb", "A: " + long + "\r\n\r\nb"},
		{"empty", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tc.in), iotest.OneByteReader(strings.NewReader(tc.in))} {
				got, err := io.ReadAll(StripFields(r, "X-Virus-Status"))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != tc.want {
					t.Errorf("got %.200q\nwant %.200q", got, tc.want)
				}
			}
		})
	}
}

// An error from the underlying reader (a size limit) comes through as it is.
func TestStripFieldsPassesErrors(t *testing.T) {
	boom := io.ErrUnexpectedEOF
	r := io.MultiReader(strings.NewReader("A: 1\r\nX-Virus-Status: x"), iotest.ErrReader(boom))
	if _, err := io.ReadAll(StripFields(r, "X-Virus-Status")); err != boom {
		t.Fatalf("err = %v, want %v", err, boom)
	}
}
