// Package testkit holds the small helpers that tests of several packages
// share: a log buffer safe for concurrent writers, polling until a
// condition holds (instead of fixed sleeps), a clock the test moves,
// self-signed certificates and a raw line client for POP3 and LMTP/SMTP.
//
// It must not import store: store's own tests (package store) import it.
//
// It is imported only by tests. Real peers (Postfix, slapd, clamd, ...)
// live in internal/testenv; this package starts nothing.
package testkit

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// LogBuffer collects log output (an io.Writer for slog handlers) and is
// safe for the concurrent writes of a server under test.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Line returns the first line that contains all of parts, if any.
func (l *LogBuffer) Line(parts ...string) (string, bool) {
	return LineWith(l.String(), parts...)
}

// WaitFor waits up to timeout for a line containing all of parts and
// returns it; it fails the test with the whole log otherwise. Servers
// often log a session's end after the client already saw it, so a test
// waits for the line rather than reading the buffer once.
func (l *LogBuffer) WaitFor(t testing.TB, timeout time.Duration, parts ...string) string {
	t.Helper()
	var line string
	Eventually(t, timeout, func() bool {
		var ok bool
		line, ok = l.Line(parts...)
		return ok
	}, func() string { return "no log line with " + quoteAll(parts) + " in:\n" + l.String() })
	return line
}

// LineWith returns the first line of text that contains all of parts.
func LineWith(text string, parts ...string) (string, bool) {
	for _, line := range strings.Split(text, "\n") {
		if containsAll(line, parts) {
			return line, true
		}
	}
	return "", false
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func quoteAll(parts []string) string {
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = `"` + p + `"`
	}
	return "[" + strings.Join(q, " ") + "]"
}

// pollInterval is short because the conditions polled are cheap (a
// directory listing, a buffer scan) and tests should not idle.
const pollInterval = 10 * time.Millisecond

// Eventually polls cond until it returns true, and fails the test with
// what() once timeout has passed. The timeout is a bound on a hang, not a
// timing assertion: choose it generously.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("after %s: %s", timeout, what())
	}
}

// Poll polls cond until it returns true (then true) or timeout has passed
// (then false), for callers that report the failure themselves.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}
