package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestDeliverPanicDefers: a panic inside the deliver action exits 75 (Go's
// own status for a panic, 2, would bounce the message) and leaves the
// panic value and the stack on stderr. The real command runs, with its
// action replaced by one that panics.
func TestDeliverPanicDefers(t *testing.T) {
	var stdout, stderr bytes.Buffer
	app := newApp(strings.NewReader("Subject: x\r\n\r\nbody\r\n"), &stdout, &stderr)
	deliver := app.Command("deliver")
	deliver.Action = recoverAsTempFail(func(*cli.Context) error { panic("forced for the test") })

	code := runApp(app, []string{"nfsdrop", "deliver", "-a", "alice@example.org"}, &stderr)
	if code != exTempFail {
		t.Fatalf("exit %d, want %d\n%s", code, exTempFail, stderr.String())
	}
	for _, want := range []string{"panic: forced for the test", "TestDeliverPanicDefers", "try again later"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
		}
	}
}

// TestDeliverExitStatus: only 0, 67, 69, 75 and 77 come out of deliver;
// every other status would bounce and becomes 75, and a run that never
// reached the action (help) is no delivery.
func TestDeliverExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		ran  bool
		want int
	}{
		{"stored", nil, true, exOK},
		{"help: nothing delivered", nil, false, exTempFail},
		{"unknown user", exitError("", exNoUser), true, exNoUser},
		{"refused", exitError("", exUnavailable), true, exUnavailable},
		{"over quota", exitError("", exNoPerm), true, exNoPerm},
		{"temporary", exitError("", exTempFail), true, exTempFail},
		{"config", exitError("bad", exConfig), true, exTempFail},
		{"usage", exitError("bad", exUsage), true, exTempFail},
		{"software", exitError("bad", exSoftware), true, exTempFail},
		{"data error", exitError("bad", exDataErr), true, exTempFail},
		{"exit 1", exitError("bad", 1), true, exTempFail},
		{"plain error from the library", errors.New("flag provided but not defined: -x"), false, exTempFail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := deliverExitStatus(tc.err, tc.ran, &stderr); got != tc.want {
				t.Errorf("exit %d, want %d\n%s", got, tc.want, stderr.String())
			}
		})
	}
}
