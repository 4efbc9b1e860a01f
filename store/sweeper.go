package store

import (
	"sync"
	"time"
)

// sweepEvery is how often, at most, the daemons sweep one Maildir's tmp/
// in passing.
const sweepEvery = 24 * time.Hour

// backgroundSweeper sweeps the tmp/ of Maildirs this process uses, at most
// once per sweepEvery each, one at a time in the background. The sweeping
// is so spread over the mailboxes that are actually used, costs one
// directory listing per Maildir per day, and never runs on the delivery
// path. Maildirs nobody uses are left to `nfsdrop maildir clean` (the
// packaged timer).
type backgroundSweeper struct {
	mu      sync.Mutex
	last    map[string]time.Time
	pending chan string
	max     int
}

func newBackgroundSweeper(max int) *backgroundSweeper {
	return &backgroundSweeper{last: make(map[string]time.Time), pending: make(chan string, 64), max: max}
}

// SweepInPassing asks for maildir's tmp/ to be swept in the background if
// this process has not done so in the last day. It never blocks: when the
// queue is full the request is dropped (the Maildir comes round again).
func (s *Store) SweepInPassing(maildir string) {
	b := s.sweeper
	if b == nil {
		return
	}
	now := s.now()
	b.mu.Lock()
	if t, ok := b.last[maildir]; ok && now.Sub(t) < sweepEvery {
		b.mu.Unlock()
		return
	}
	if len(b.last) >= b.max {
		// Forget everything rather than track an unbounded set: the cost
		// is one extra listing per Maildir.
		clear(b.last)
	}
	b.last[maildir] = now
	b.mu.Unlock()
	select {
	case b.pending <- maildir:
	default:
	}
}

// StartSweeper runs the background sweeper until stop is closed. Daemons
// call it; commands that exit soon do not.
func (s *Store) StartSweeper(stop <-chan struct{}, maxAge time.Duration) {
	if s.sweeper == nil {
		s.sweeper = newBackgroundSweeper(100000)
	}
	b := s.sweeper
	go func() {
		for {
			select {
			case <-stop:
				return
			case md := <-b.pending:
				if _, err := s.SweepTmp(md, maxAge, false); err != nil {
					s.log.Warn("could not sweep tmp/", "maildir", md, "err", err)
				}
			}
		}
	}()
}
