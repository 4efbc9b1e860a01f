// The POP3 side of load: pop3 fill, pop3 session and pop3 idle, for
// bench/pop3.sh.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// --- fill -------------------------------------------------------------------

// message returns message i of a fill: exactly size bytes (at least the
// headers' length), LF line ends, ending in LF, with a body line starting
// with ".". crlf is its size with CRLF line ends (RFC 1939 size).
func pop3Message(i, size int) (msg []byte, crlf int) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Return-Path: <a@bench.test>\nFrom: <a@bench.test>\nTo: <u@bench.test>\n"+
		"Message-ID: <%d.fill@bench.test>\nSubject: bench message %d\n\n.a line that must be byte-stuffed\n", i, i)
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3)[:76] + "\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	if rest := size - b.Len(); rest > 1 {
		b.WriteString(line[:rest-1] + "\n")
	} else if rest == 1 {
		b.WriteString("\n")
	}
	msg = b.Bytes()
	return msg, len(msg) + bytes.Count(msg, []byte{'\n'})
}

func pop3Fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	n := fs.Int("n", 1000, "messages per mailbox")
	size := fs.Int("size", 2048, "bytes of each message file (LF line ends)")
	users := fs.Int("users", 0, "if > 0, every DIR has a %d that is replaced by 1..users")
	host := fs.String("host", "bench", "host part of the file names")
	workers := fs.Int("workers", 8, "parallel writers")
	fs.Parse(args)
	if fs.NArg() < 1 || *n < 0 {
		return errors.New("fill: want at least one directory (a Maildir's new/)")
	}
	var dirs []string
	for _, d := range fs.Args() {
		if *users > 0 {
			if !strings.Contains(d, "%d") {
				return fmt.Errorf("fill: %q has no %%d (needed with -users)", d)
			}
			for u := 1; u <= *users; u++ {
				dirs = append(dirs, fmt.Sprintf(d, u))
			}
		} else {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		md := filepath.Dir(filepath.Clean(d))
		for _, sub := range []string{"tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
				return err
			}
		}
	}
	// The same names in every directory: each server gets the same mail.
	t0 := time.Now().Unix() - int64(*n/1000) - 60
	pid := os.Getpid()
	names := make([]string, *n)
	for i := range names {
		msg, crlf := pop3Message(i, *size)
		var rnd [4]byte
		rand.Read(rnd[:])
		names[i] = fmt.Sprintf("%d.M%06dP%dQ%dR%s.%s,S=%d,W=%d", t0+int64(i/1000), (i%1000)*1000, pid, i+1,
			hex.EncodeToString(rnd[:]), *host, len(msg), crlf)
	}
	type job struct {
		dir string
		i   int
	}
	jobs := make(chan job, 256)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				msg, _ := pop3Message(j.i, *size)
				if err := os.WriteFile(filepath.Join(j.dir, names[j.i]), msg, 0o600); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, d := range dirs {
		for i := range names {
			jobs <- job{d, i}
		}
	}
	close(jobs)
	wg.Wait()
	if first != nil {
		return first
	}
	fmt.Printf("wrote %d files into each of %d directories\n", *n, len(dirs))
	return nil
}

// --- POP3 connection -------------------------------------------------------

type pop3Conn struct {
	c       net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
}

func pop3Dial(addr string, timeout time.Duration, rbuf int) (*pop3Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &pop3Conn{c: nc, r: bufio.NewReaderSize(nc, rbuf), w: bufio.NewWriterSize(nc, 4096), timeout: timeout}
	if _, err := c.status("greeting"); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *pop3Conn) send(format string, a ...any) error {
	c.c.SetWriteDeadline(time.Now().Add(c.timeout))
	fmt.Fprintf(c.w, format+"\r\n", a...)
	return c.w.Flush()
}

// readLine returns a line without CRLF; the slice is valid until the next
// read.
func (c *pop3Conn) readLine() ([]byte, error) {
	c.c.SetReadDeadline(time.Now().Add(c.timeout))
	line, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errors.New("line longer than the read buffer")
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// status reads a one-line reply and fails unless it is +OK.
func (c *pop3Conn) status(what string) (string, error) {
	line, err := c.readLine()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if !bytes.HasPrefix(line, []byte("+OK")) {
		return "", fmt.Errorf("%s: %s", what, line)
	}
	return string(line), nil
}

// multi reads the lines of a multi-line reply after its status line,
// un-byte-stuffed, until the terminating ".", calling fn for each (the
// slice is valid only during the call).
func (c *pop3Conn) multi(what string, fn func(line []byte)) error {
	for {
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if len(line) > 0 && line[0] == '.' {
			if len(line) == 1 {
				return nil
			}
			line = line[1:]
		}
		fn(line)
	}
}

// --- session ------------------------------------------------------------------

type sessionConfig struct {
	addr, user, pass string
	expect           int
	retr             bool
	pipeline         int
	timeout          time.Duration
}

type result struct {
	total, login, stat, uidl, retrTime, quit time.Duration
	statCount                                int
	statOctets                               int64
	uidls, unique                            int
	listSum, retrBytes                       int64
	retrMsgs, sizeMismatch                   int
}

func pop3Sessions(args []string) error {
	var c sessionConfig
	fs := flag.NewFlagSet("session", flag.ExitOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:110", "POP3 server `host:port`")
	fs.StringVar(&c.user, "user", "u1@bench.test", "login name")
	fs.StringVar(&c.pass, "pass", "x", "password")
	fs.IntVar(&c.expect, "expect", -1, "messages STAT and UIDL must count (-1: no check)")
	fs.BoolVar(&c.retr, "retr", false, "LIST, then RETR every message and check its size")
	fs.IntVar(&c.pipeline, "pipeline", 1, "RETR commands sent before their replies are read")
	repeat := fs.Int("repeat", 1, "sessions, one after the other")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "timeout of one reply")
	fs.Parse(args)
	if c.pipeline < 1 {
		c.pipeline = 1
	}
	var totals []float64
	for i := 0; i < *repeat; i++ {
		r, err := pop3Session(&c)
		if err != nil {
			return err
		}
		fmt.Printf("seconds=%.4f login=%.4f stat=%.4f uidl=%.4f quit=%.4f messages=%d octets=%d uidls=%d unique=%d",
			r.total.Seconds(), r.login.Seconds(), r.stat.Seconds(), r.uidl.Seconds(), r.quit.Seconds(),
			r.statCount, r.statOctets, r.uidls, r.unique)
		if c.retr {
			fmt.Printf(" retr_seconds=%.4f retr_msgs=%d retr_bytes=%d list_sum=%d size_mismatch=%d mb_per_s=%.1f",
				r.retrTime.Seconds(), r.retrMsgs, r.retrBytes, r.listSum, r.sizeMismatch,
				float64(r.retrBytes)/1e6/r.retrTime.Seconds())
		}
		fmt.Println()
		var bad []string
		if c.expect >= 0 && (r.statCount != c.expect || r.uidls != c.expect) {
			bad = append(bad, fmt.Sprintf("STAT %d and UIDL %d messages, want %d", r.statCount, r.uidls, c.expect))
		}
		if r.unique != r.uidls {
			bad = append(bad, fmt.Sprintf("%d UIDLs but %d distinct", r.uidls, r.unique))
		}
		if c.retr && (r.retrBytes != r.listSum || r.sizeMismatch != 0 || r.retrMsgs != r.statCount || r.listSum != r.statOctets) {
			bad = append(bad, fmt.Sprintf("RETR %d messages, %d bytes; LIST sum %d; STAT %d octets; %d sizes differ",
				r.retrMsgs, r.retrBytes, r.listSum, r.statOctets, r.sizeMismatch))
		}
		if len(bad) > 0 {
			return errors.New("check failed: " + strings.Join(bad, "; "))
		}
		totals = append(totals, r.total.Seconds())
	}
	if *repeat > 1 {
		sort.Float64s(totals)
		fmt.Printf("summary sessions=%d median=%.4f min=%.4f max=%.4f\n", len(totals), totals[len(totals)/2], totals[0], totals[len(totals)-1])
	}
	return nil
}

func pop3Session(cfg *sessionConfig) (r result, err error) {
	start := time.Now()
	c, err := pop3Dial(cfg.addr, cfg.timeout, 64<<10)
	if err != nil {
		return r, err
	}
	defer c.c.Close()
	if err := c.send("USER %s", cfg.user); err != nil {
		return r, err
	}
	if _, err := c.status("USER"); err != nil {
		return r, err
	}
	if err := c.send("PASS %s", cfg.pass); err != nil {
		return r, err
	}
	if _, err := c.status("PASS"); err != nil {
		return r, err
	}
	t := time.Now()
	r.login = t.Sub(start)

	if err := c.send("STAT"); err != nil {
		return r, err
	}
	st, err := c.status("STAT")
	if err != nil {
		return r, err
	}
	f := strings.Fields(st)
	if len(f) < 3 {
		return r, fmt.Errorf("STAT: %q", st)
	}
	if r.statCount, err = strconv.Atoi(f[1]); err != nil {
		return r, fmt.Errorf("STAT: %q", st)
	}
	if r.statOctets, err = strconv.ParseInt(f[2], 10, 64); err != nil {
		return r, fmt.Errorf("STAT: %q", st)
	}
	r.stat = time.Since(t)

	t = time.Now()
	if err := c.send("UIDL"); err != nil {
		return r, err
	}
	if _, err := c.status("UIDL"); err != nil {
		return r, err
	}
	// The ids are only collected here (one buffer, no allocation per
	// line) and checked for duplicates after the session, so that the
	// client's own work weighs as little as possible in the times.
	ids := make([]byte, 0, 64<<10)
	err = c.multi("UIDL", func(line []byte) {
		r.uidls++
		if sp := bytes.IndexByte(line, ' '); sp >= 0 {
			ids = append(ids, line[sp+1:]...)
		}
		ids = append(ids, '\n')
	})
	if err != nil {
		return r, err
	}
	r.uidl = time.Since(t)
	defer func() {
		seen := make(map[string]struct{}, r.uidls)
		for _, id := range bytes.Split(ids, []byte{'\n'}) {
			if len(id) > 0 {
				seen[string(id)] = struct{}{}
			}
		}
		r.unique = len(seen)
	}()

	if cfg.retr {
		if err := c.send("LIST"); err != nil {
			return r, err
		}
		if _, err := c.status("LIST"); err != nil {
			return r, err
		}
		var sizes []int64
		err = c.multi("LIST", func(line []byte) {
			if f := strings.Fields(string(line)); len(f) == 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				sizes = append(sizes, n)
				r.listSum += n
			}
		})
		if err != nil {
			return r, err
		}
		t = time.Now()
		for first := 0; first < len(sizes); first += cfg.pipeline {
			last := min(first+cfg.pipeline, len(sizes))
			c.c.SetWriteDeadline(time.Now().Add(cfg.timeout))
			for i := first; i < last; i++ {
				fmt.Fprintf(c.w, "RETR %d\r\n", i+1)
			}
			if err := c.w.Flush(); err != nil {
				return r, err
			}
			for i := first; i < last; i++ {
				if _, err := c.status(fmt.Sprintf("RETR %d", i+1)); err != nil {
					return r, err
				}
				var got int64
				if err := c.multi("RETR", func(line []byte) { got += int64(len(line)) + 2 }); err != nil {
					return r, err
				}
				if got != sizes[i] {
					r.sizeMismatch++
				}
				r.retrBytes += got
				r.retrMsgs++
			}
		}
		r.retrTime = time.Since(t)
	}

	t = time.Now()
	if err := c.send("QUIT"); err != nil {
		return r, err
	}
	if _, err := c.status("QUIT"); err != nil {
		return r, err
	}
	r.quit = time.Since(t)
	r.total = time.Since(start)
	return r, nil
}

// --- idle -----------------------------------------------------------------------

func pop3Idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:110", "POP3 server `host:port`")
	n := fs.Int("n", 1000, "connections")
	login := fs.Bool("login", false, "log in on each connection (USER/PASS)")
	user := fs.String("user", "i%d@idle.test", "login name pattern; %d is 1..n")
	pass := fs.String("pass", "x", "password")
	conc := fs.Int("concurrency", 32, "connections being opened at once")
	timeout := fs.Duration("timeout", 2*time.Minute, "timeout of one reply")
	fs.Parse(args)
	if *login && !strings.Contains(*user, "%d") {
		return errors.New("idle: -user must contain %d")
	}
	// Before anything is opened: a SIGTERM must always end in QUITs.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	conns := make([]*pop3Conn, *n)
	var (
		next   atomic.Int64
		failed atomic.Bool
		mu     sync.Mutex
		first  error
		wg     sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				err := func() error {
					c, err := pop3Dial(*addr, *timeout, 512)
					if err != nil {
						return fmt.Errorf("connection %d: %w", i+1, err)
					}
					conns[i] = c
					if !*login {
						return nil
					}
					u := fmt.Sprintf(*user, i+1)
					if err := c.send("USER %s", u); err != nil {
						return err
					}
					if _, err := c.status("USER " + u); err != nil {
						return err
					}
					if err := c.send("PASS %s", *pass); err != nil {
						return err
					}
					if _, err := c.status("PASS " + u); err != nil {
						return err
					}
					return nil
				}()
				if err != nil {
					failed.Store(true)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	if first != nil {
		for _, c := range conns {
			if c != nil {
				c.c.Close()
			}
		}
		return fmt.Errorf("%d of %d connections open: %w", opened, *n, first)
	}
	fmt.Printf("ready sessions=%d login=%v seconds=%.2f\n", opened, *login, time.Since(start).Seconds())
	os.Stdout.Sync()

	<-sig

	// QUIT each (after login: the server releases the mailbox normally).
	t := time.Now()
	var quitFailures atomic.Int64
	next.Store(0)
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				c := conns[i]
				if c.send("QUIT") != nil {
					quitFailures.Add(1)
				} else if _, err := c.status("QUIT"); err != nil {
					quitFailures.Add(1)
				}
				c.c.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("closed sessions=%d quit_failures=%d seconds=%.2f\n", len(conns), quitFailures.Load(), time.Since(t).Seconds())
	return nil
}
