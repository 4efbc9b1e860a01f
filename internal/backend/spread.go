package backend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/nfsdrop/nfsdrop/internal/envelope"
	"github.com/nfsdrop/nfsdrop/internal/scan"
	"github.com/nfsdrop/nfsdrop/internal/volume"
	"github.com/nfsdrop/nfsdrop/lmtp"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// target is where a recipient is delivered: its volume and its Maildir
// there.
type target struct {
	vol *volume.Volume
	mb  store.Mailbox
}

// spoolInMemory is the largest message spooled in memory before it is
// staged on several volumes; a larger one goes to a file in os.TempDir.
const spoolInMemory = 1 << 20

// deliverSpread delivers to recipients on several volumes (a Set of more
// than one). The message is read once into a local spool (and scanned on
// the way), then staged once per volume and published to that volume's
// recipients, each volume in its own goroutine: a hung or failing filer
// holds up only its own recipients' staging, and each recipient's answer
// depends only on its own volume and Maildir. A recipient whose Maildir
// turns out to have moved to another volume (*store.MovedError) is
// delivered there from the same spool, once.
func (t *transaction) deliverSpread(ctx context.Context, src *Sources, rcpts []recipient, live []int, trace string,
	body io.Reader, in *firstError, answer func(int, lmtp.Status)) {
	var mu sync.Mutex // answers come from one goroutine per volume
	answerOne := func(i int, s lmtp.Status) {
		mu.Lock()
		defer mu.Unlock()
		answer(i, s)
	}
	answerAll := func(err error) {
		for _, i := range live {
			answerOne(i, lmtp.Status{Err: err})
		}
	}

	verdict := &message{policy: src.Scan}
	msg := body
	var scanned func() (scan.Result, error)
	if src.Scan != nil && src.Scan.Scanner != nil {
		msg, scanned = src.Scan.tee(ctx, body)
	}
	sp, err := spoolLocally(msg)
	if scanned != nil {
		res, scanErr := scanned()
		if err == nil {
			verdict.judge(res, scanErr)
		}
	}
	if err == nil && in.err != nil {
		err = in.err
	}
	if err != nil {
		answerAll(readFailure(err, "message not received completely"))
		return
	}
	defer sp.Close()
	if verdict.refuse != nil {
		answerAll(verdict.refuse)
		return
	}
	if verdict.quarantine {
		t.quarantineSpread(src, sp, trace, verdict, live, answerOne)
		return
	}

	eachDeliveredTo := t.env.DeliveredToEach && len(live) > 1
	// deliver stages the message on one volume for its recipients and
	// publishes it to each; it returns the recipients whose Maildir moved
	// (not answered yet), with where it went.
	deliver := func(vol *volume.Volume, group []int, mailboxes []store.Mailbox) map[int]target {
		moved := make(map[int]target)
		follow := func(i int, mb store.Mailbox, err error) bool {
			var mv *store.MovedError
			if !errors.As(err, &mv) {
				return false
			}
			nv, nmb, err := src.Volumes.Relocate(vol, mb, mv.Volume)
			if err != nil {
				answerOne(i, lmtp.Status{Err: err})
			} else {
				moved[i] = target{nv, nmb}
			}
			return true
		}
		st, err := vol.Store.StageFor(mailboxes, io.MultiReader(strings.NewReader(trace), sp.Reader()))
		if err != nil {
			// A single recipient's message is staged in its own tmp/,
			// which a moved Maildir no longer has.
			if len(group) == 1 && follow(group[0], mailboxes[0], err) {
				return moved
			}
			for _, i := range group {
				answerOne(i, lmtp.Status{Err: err})
			}
			return moved
		}
		m := &message{st: st, policy: src.Scan, header: verdict.header}
		defer m.Discard()
		if d := t.b.commitDeadline; d > 0 {
			m.SetDeadline(in.endedAt().Add(d))
		}
		for j, i := range group {
			var prefix []byte
			if eachDeliveredTo {
				prefix = []byte(envelope.DeliveredTo(rcpts[i].addr))
			}
			d, err := m.Deliver(mailboxes[j], prefix)
			if follow(i, mailboxes[j], err) {
				continue
			}
			answerOne(i, lmtp.Status{Err: err, Key: d.Key, Size: d.Size, Recipients: len(live)})
		}
		return moved
	}

	first := make(map[int]target, len(live))
	for _, i := range live {
		first[i] = target{rcpts[i].vol, rcpts[i].mailbox}
	}
	moved := runGroups(live, first, deliver)
	if len(moved) == 0 {
		return
	}
	// Second and last round: the moved Maildirs on their new volumes.
	var again []int
	for _, i := range live {
		if _, ok := moved[i]; ok {
			again = append(again, i)
		}
	}
	for i := range runGroups(again, moved, deliver) {
		answerOne(i, lmtp.Status{Err: failure.Temp("deliver", "mailbox being moved", nil)})
	}
}

// runGroups groups the recipients by volume and runs deliver for each
// volume concurrently, each with its own slices; it collects the
// recipients whose Maildir moved.
func runGroups(rcpts []int, where map[int]target,
	deliver func(*volume.Volume, []int, []store.Mailbox) map[int]target) map[int]target {
	type group struct {
		idx []int
		mbs []store.Mailbox
	}
	groups := make(map[*volume.Volume]*group)
	var order []*volume.Volume
	for _, i := range rcpts {
		w := where[i]
		g := groups[w.vol]
		if g == nil {
			g = &group{}
			groups[w.vol] = g
			order = append(order, w.vol)
		}
		g.idx = append(g.idx, i)
		g.mbs = append(g.mbs, w.mb)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		moved = make(map[int]target)
	)
	for _, v := range order {
		wg.Go(func() {
			m := deliver(v, groups[v].idx, groups[v].mbs)
			mu.Lock()
			defer mu.Unlock()
			for i, t := range m {
				moved[i] = t
			}
		})
	}
	wg.Wait()
	return moved
}

// quarantineSpread puts an infected message once into the quarantine
// Maildir (on the volume holding its path) and answers every recipient
// with that delivery.
func (t *transaction) quarantineSpread(src *Sources, sp *localSpool, trace string, verdict *message, live []int, answer func(int, lmtp.Status)) {
	q := src.Scan.Quarantine
	vol := src.Volumes.Holding(q.Path)
	st, err := vol.Store.StageFor([]store.Mailbox{q}, io.MultiReader(strings.NewReader(trace), sp.Reader()))
	if err != nil {
		for _, i := range live {
			answer(i, lmtp.Status{Err: err})
		}
		return
	}
	m := &message{st: st, policy: src.Scan, header: verdict.header, quarantine: true}
	defer m.Discard()
	for _, i := range live {
		d, err := m.Deliver(q, nil)
		answer(i, lmtp.Status{Err: err, Key: d.Key, Size: d.Size, Quarantined: true, Recipients: len(live)})
	}
}

// localSpool is a message held on this machine: in memory up to
// spoolInMemory, else in an unlinked file in os.TempDir.
type localSpool struct {
	mem  []byte
	file *os.File
	size int64
}

// spoolLocally reads r to its end into a localSpool.
func spoolLocally(r io.Reader) (*localSpool, error) {
	var buf bytes.Buffer
	n, err := io.CopyN(&buf, r, spoolInMemory+1)
	if err == io.EOF {
		return &localSpool{mem: buf.Bytes(), size: n}, nil
	}
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("", "nfsdrop-spool-")
	if err != nil {
		return nil, failure.Temp("spool message", "local spool unavailable", err)
	}
	// Unlinked at once: nothing is left behind by a crash.
	os.Remove(f.Name())
	size, err := io.Copy(f, io.MultiReader(&buf, r))
	if err != nil {
		f.Close()
		if _, write := err.(*os.PathError); write {
			return nil, failure.Temp("spool message", "local spool unavailable", err)
		}
		return nil, err
	}
	return &localSpool{file: f, size: size}, nil
}

// Reader reads the spooled message from its start; several may be used
// at once.
func (s *localSpool) Reader() io.Reader {
	if s.file != nil {
		return io.NewSectionReader(s.file, 0, s.size)
	}
	return bytes.NewReader(s.mem)
}

// Close releases the spool.
func (s *localSpool) Close() {
	if s.file != nil {
		s.file.Close()
	}
}
