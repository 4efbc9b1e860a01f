package loadcheck

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// BenchResult is the outcome of a throughput measurement.
type BenchResult struct {
	// OK counts completed units (deliveries answered 250, POP3 sessions
	// ended with QUIT +OK); Failed the rest; InUse the [IN-USE] logins.
	OK, Failed, InUse int64
	Seconds           float64
	FirstError        string
}

// Rate is OK per second.
func (r BenchResult) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.OK) / r.Seconds
}

func (r BenchResult) String() string {
	s := fmt.Sprintf("%d in %.1fs = %.1f/s", r.OK, r.Seconds, r.Rate())
	if r.Failed > 0 || r.InUse > 0 {
		s += fmt.Sprintf(" (%d failed, %d in use; first error: %s)", r.Failed, r.InUse, r.FirstError)
	}
	return s
}

// LMTPBench delivers messages of about size bytes over conns LMTP
// connections to addr (a load balancer or one server) for d, round robin
// over users, one recipient per transaction.
func LMTPBench(ctx context.Context, dial DialFunc, addr string, users []string, conns, size int, d time.Duration) BenchResult {
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	var seq atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Quit()
					c.Close()
				}
			}()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if c == nil {
					conn, err := dial(ctx, "tcp", addr)
					if err != nil {
						fail(err)
						time.Sleep(200 * time.Millisecond)
						continue
					}
					c = smtp.NewClientLMTP(conn)
					if err := c.Hello("bench.lab.test"); err != nil {
						fail(err)
						c.Close()
						c = nil
						continue
					}
				}
				n := int(seq.Add(1))
				user := users[n%len(users)]
				_, msg := Compose("bench", n, "bench@lab.test", user, size, time.Now())
				if err := submitLMTP(c, "bench@lab.test", user, msg); err != nil {
					fail(err)
					c.Close()
					c = nil
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	r := BenchResult{OK: ok.Load(), Failed: failed.Load(), Seconds: time.Since(start).Seconds()}
	if e, _ := firstErr.Load().(string); e != "" {
		r.FirstError = e
	}
	return r
}

// POP3Bench runs one client per user for d, each logging in again and
// again: USER, PASS, UIDL, QUIT (nothing deleted: a repeat login on an
// unchanged mailbox).
func POP3Bench(ctx context.Context, dial DialFunc, addr string, users []string, password string, d time.Duration) BenchResult {
	var ok, failed, inUse atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				err := popLogin(ctx, dial, addr, u, password)
				switch {
				case err == nil:
					ok.Add(1)
				case strings.Contains(err.Error(), "[IN-USE]"):
					inUse.Add(1)
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	r := BenchResult{OK: ok.Load(), Failed: failed.Load(), InUse: inUse.Load(), Seconds: time.Since(start).Seconds()}
	if e, _ := firstErr.Load().(string); e != "" {
		r.FirstError = e
	}
	return r
}

// Login logs in as user once (USER, PASS, UIDL, QUIT) and returns the
// number of messages listed and the server's name.
func Login(ctx context.Context, dial DialFunc, addr, user, password string) (n int, host string, err error) {
	p, greet, err := dialPOP3(ctx, dial, addr, 60*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer p.Close()
	if f := strings.Fields(greet); len(f) > 1 {
		host = f[1]
	}
	if st, err := p.cmd("USER %s", user); err != nil || !strings.HasPrefix(st, "+OK") {
		return 0, host, fmt.Errorf("USER: %q %v", st, err)
	}
	st, err := p.cmd("PASS %s", password)
	if err != nil {
		return 0, host, err
	}
	if !strings.HasPrefix(st, "+OK") {
		return 0, host, fmt.Errorf("PASS: %s", st)
	}
	u, err := p.uidl()
	if err != nil {
		return 0, host, err
	}
	st, err = p.cmd("QUIT")
	if err != nil || !strings.HasPrefix(st, "+OK") {
		return len(u), host, fmt.Errorf("QUIT: %q %v", st, err)
	}
	return len(u), host, nil
}

func popLogin(ctx context.Context, dial DialFunc, addr, user, password string) error {
	_, _, err := Login(ctx, dial, addr, user, password)
	return err
}

func submitLMTP(c *smtp.Client, from, to string, msg []byte) error {
	w, err := sendData(c, from, to, msg)
	if err != nil {
		return err
	}
	_, err = w.CloseWithLMTPResponse()
	return err
}

// FetchAll logs in as user, retrieves every message (checking its
// checksum) and, with del, deletes it, then QUITs. It returns the number
// of messages retrieved.
func FetchAll(ctx context.Context, dial DialFunc, addr, user, password string, del bool) (int, error) {
	p, _, err := dialPOP3(ctx, dial, addr, 120*time.Second)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	if st, err := p.cmd("USER %s", user); err != nil || !strings.HasPrefix(st, "+OK") {
		return 0, fmt.Errorf("USER: %q %v", st, err)
	}
	if st, err := p.cmd("PASS %s", password); err != nil || !strings.HasPrefix(st, "+OK") {
		return 0, fmt.Errorf("PASS: %q %v", st, err)
	}
	u, err := p.uidl()
	if err != nil {
		return 0, err
	}
	for i := range u {
		body, err := p.retr(i + 1)
		if err != nil {
			return i, err
		}
		if m := Parse(body); !m.Intact {
			return i, fmt.Errorf("message %d (%s): %s", i+1, u[i], m.Problem)
		}
		if del {
			if st, err := p.cmd("DELE %d", i+1); err != nil || !strings.HasPrefix(st, "+OK") {
				return i, fmt.Errorf("DELE: %q %v", st, err)
			}
		}
	}
	st, err := p.cmd("QUIT")
	if err != nil || !strings.HasPrefix(st, "+OK") {
		return len(u), fmt.Errorf("QUIT: %q %v", st, err)
	}
	return len(u), nil
}

// LMTPDeliver delivers n messages of about size bytes to user over one
// LMTP connection to addr, one after the other, and returns how many were
// acknowledged (250) before the first failure.
func LMTPDeliver(ctx context.Context, dial DialFunc, addr, user string, n, size int) (int, error) {
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("bench.lab.test"); err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		_, msg := Compose("calls", i, "bench@lab.test", user, size, time.Now())
		if err := submitLMTP(c, "bench@lab.test", user, msg); err != nil {
			return i, fmt.Errorf("message %d: %w", i+1, err)
		}
	}
	return n, c.Quit()
}
