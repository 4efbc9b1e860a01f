package store

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nextRoundWaiters is how many callers wait for dir's next fsync round.
func nextRoundWaiters(g *dirSyncer, dir string) int {
	g.mu.Lock()
	d := g.dirs[dir]
	g.mu.Unlock()
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.next == nil {
		return 0
	}
	return d.next.waiters
}

// waitUntil polls cond (a state the test caused, not a timing) for up to
// 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A delivery whose covering fsync of new/ failed gets that error, even
// when a later fsync (started by a later delivery) succeeds before it
// looks: after a failed fsync a later one may succeed without the earlier
// entries being durable.
func TestDirSyncWaiterGetsItsOwnFsyncResult(t *testing.T) {
	const dir = "/mail/new"
	eio := &os.PathError{Op: "fsync", Path: dir, Err: syscall.EIO}
	release1 := make(chan struct{})
	var (
		mu    sync.Mutex
		calls int
		g     *dirSyncer
	)
	lateDone := make(chan error, 1)
	g = newDirSyncer(func(string) error {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		switch n {
		case 1: // covers only the first caller; the others wait for #2
			<-release1
			return nil
		case 2: // the covering fsync of the waiters: a late caller joins #3 meanwhile
			go func() { lateDone <- g.Sync(dir, dir) }()
			waitUntil(t, "the late caller to wait for the next fsync", func() bool { return nextRoundWaiters(g, dir) == 1 })
			return eio
		}
		return nil // #3 succeeds
	})

	firstDone := make(chan error, 1)
	go func() { firstDone <- g.Sync(dir, dir) }()
	waitUntil(t, "the first fsync to start", func() bool { mu.Lock(); defer mu.Unlock(); return calls == 1 })
	const waiters = 4
	results := make(chan error, waiters)
	for i := 0; i < waiters; i++ {
		go func() { results <- g.Sync(dir, dir) }()
	}
	waitUntil(t, "the waiters to join the next fsync", func() bool { return nextRoundWaiters(g, dir) == waiters })
	close(release1)

	if err := <-firstDone; err != nil {
		t.Errorf("first caller: %v", err)
	}
	for i := 0; i < waiters; i++ {
		if err := <-results; !errors.Is(err, syscall.EIO) {
			t.Errorf("a waiter covered by the failed fsync got %v, want EIO", err)
		}
	}
	if err := <-lateDone; err != nil {
		t.Errorf("late caller, covered by the fsync that worked: %v", err)
	}
}
