package fsgate

import (
	"testing"
)

// The cost the gate adds to each call on a healthy volume: a waited call
// (a slot) and a lookup that may be given up (a slot, a goroutine and a
// timer). Every RCPT and POP3 login makes a few lookups, on single-volume
// sites too (the default volume is gated).

func BenchmarkWaitedCall(b *testing.B) {
	g := New(nil, Options{Volume: "bench"})
	b.ReportAllocs()
	for b.Loop() {
		if err := g.do(func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGivenUpLookup(b *testing.B) {
	g := New(nil, Options{Volume: "bench"})
	b.ReportAllocs()
	for b.Loop() {
		if err := g.DoLookup(func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
