// The LMTP side of load: lmtp send (the measured load of bench/lmtp.sh and
// bench/lmtp-variants.sh) and lmtp fill (a mailbox pre-populated directly).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type sendConfig struct {
	addr     string
	sessions int
	messages int
	size     int
	rcpts    int
	users    int
	rcpt     string
	from     string
	timeout  time.Duration
	bodyLine string
	duration time.Duration
}

func lmtpSend(args []string) error {
	var c sendConfig
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:24", "LMTP server `host:port`")
	fs.IntVar(&c.sessions, "sessions", 1, "parallel sessions (connections)")
	fs.IntVar(&c.messages, "messages", 100, "messages in all")
	fs.IntVar(&c.size, "size", 2048, "message body `bytes` (headers not counted, like smtp-source -l)")
	fs.IntVar(&c.rcpts, "rcpts", 1, "recipients per message")
	fs.IntVar(&c.users, "users", 1, "distinct users the recipients cycle through")
	fs.StringVar(&c.rcpt, "rcpt", "u%d@bench.test", "recipient `pattern`; %d is the user number, 1..users")
	fs.StringVar(&c.from, "from", "a@bench.test", "envelope sender")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "timeout of one reply")
	fs.StringVar(&c.bodyLine, "body-line", "", "`text` put as the first line of every body (none when empty)")
	fs.DurationVar(&c.duration, "duration", 0, "run for about this long instead of a number of messages (0: off)")
	fs.Parse(args)
	if c.duration > 0 {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "messages" })
		if !given {
			c.messages = math.MaxInt32
		}
	}
	if c.sessions < 1 || c.messages < 1 || c.rcpts < 1 || c.users < 1 || c.size < 0 {
		return errors.New("send: sessions, messages, rcpts and users must be at least 1")
	}
	if !strings.Contains(c.rcpt, "%d") {
		return errors.New("send: -rcpt must contain %d")
	}
	body := makeBody(c.size)
	if c.bodyLine != "" {
		if strings.ContainsAny(c.bodyLine, "\r\n") || strings.HasPrefix(c.bodyLine, ".") {
			return errors.New("send: -body-line must be one line not starting with '.'")
		}
		body = append([]byte(c.bodyLine+"\r\n"), body...)
	}
	var (
		next   atomic.Int64
		done   atomic.Int64
		failed atomic.Bool
		mu     sync.Mutex
		first  error
		wg     sync.WaitGroup
	)
	start := time.Now()
	var stop time.Time
	if c.duration > 0 {
		stop = start.Add(c.duration)
	}
	for s := 0; s < c.sessions; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := lmtpSession(&c, body, &next, &done, stop, &failed)
			if err != nil {
				failed.Store(true)
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if first != nil {
		return first
	}
	m := int(done.Load())
	n := m * c.rcpts
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	fmt.Printf("messages=%d deliveries=%d seconds=%.3f deliveries_per_s=%.1f driver_cpu_s=%.3f\n",
		m, n, elapsed, float64(n)/elapsed, cpu.Seconds())
	return nil
}

// makeBody returns about size bytes (exactly size unless size mod 78 is 1)
// of CRLF-terminated lines of at most 78 characters, none starting with '.'.
func makeBody(size int) []byte {
	var b strings.Builder
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3)[:76] + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	if rest := size - b.Len(); rest > 2 {
		b.WriteString(line[:rest-2] + "\r\n")
	} else if rest > 0 {
		b.WriteString("\r\n") // the body must end in CRLF: at most a byte over
	}
	return []byte(b.String())
}

type lmtpConn struct {
	c       net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
}

// reply reads one (possibly multi-line) reply and fails unless it is 2xx
// or 3xx, as want says.
func (c *lmtpConn) reply(what string, want byte) error {
	c.c.SetReadDeadline(time.Now().Add(c.timeout))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: reading reply: %w", what, err)
		}
		if len(line) < 4 {
			return fmt.Errorf("%s: short reply %q", what, line)
		}
		if line[3] == '-' {
			continue
		}
		if line[0] != want {
			return fmt.Errorf("%s: %s", what, strings.TrimSpace(line))
		}
		return nil
	}
}

func (c *lmtpConn) cmd(format string, a ...any) error {
	c.c.SetWriteDeadline(time.Now().Add(c.timeout))
	fmt.Fprintf(c.w, format+"\r\n", a...)
	return c.w.Flush()
}

func lmtpSession(cfg *sendConfig, body []byte, next, done *atomic.Int64, stop time.Time, failed *atomic.Bool) (err error) {
	nc, err := net.DialTimeout("tcp", cfg.addr, cfg.timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	c := &lmtpConn{c: nc, r: bufio.NewReader(nc), w: bufio.NewWriterSize(nc, 64<<10), timeout: cfg.timeout}
	if err := c.reply("greeting", '2'); err != nil {
		return err
	}
	if err := c.cmd("LHLO lmtpload.bench.test"); err != nil {
		return err
	}
	if err := c.reply("LHLO", '2'); err != nil {
		return err
	}
	host, _ := os.Hostname()
	for !failed.Load() {
		if !stop.IsZero() && !time.Now().Before(stop) {
			break
		}
		i := int(next.Add(1)) - 1
		if i >= cfg.messages {
			break
		}
		if err := c.cmd("MAIL FROM:<%s>", cfg.from); err != nil {
			return err
		}
		if err := c.reply("MAIL", '2'); err != nil {
			return err
		}
		var to []string
		for j := 0; j < cfg.rcpts; j++ {
			u := (i*cfg.rcpts+j)%cfg.users + 1
			addr := fmt.Sprintf(cfg.rcpt, u)
			to = append(to, "<"+addr+">")
			if err := c.cmd("RCPT TO:<%s>", addr); err != nil {
				return err
			}
			if err := c.reply("RCPT "+addr, '2'); err != nil {
				return err
			}
		}
		if err := c.cmd("DATA"); err != nil {
			return err
		}
		if err := c.reply("DATA", '3'); err != nil {
			return err
		}
		fmt.Fprintf(c.w, "From: <%s>\r\nTo: %s\r\nDate: %s\r\nMessage-Id: <%d.%d@%s>\r\nSubject: lmtpload message %d\r\n\r\n",
			cfg.from, strings.Join(to, ", "), time.Now().Format(time.RFC1123Z), i, os.Getpid(), host, i)
		c.w.Write(body)
		if err := c.cmd("."); err != nil {
			return err
		}
		for j := 0; j < cfg.rcpts; j++ {
			if err := c.reply(fmt.Sprintf("end of DATA (message %d, recipient %d)", i, j+1), '2'); err != nil {
				return err
			}
		}
		done.Add(1)
	}
	if err := c.cmd("QUIT"); err == nil {
		c.reply("QUIT", '2')
	}
	return nil
}

func lmtpFill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	n := fs.Int("n", 100000, "messages to write")
	size := fs.Int("size", 2048, "body bytes of each message")
	host := fs.String("host", "fill", "host part of the file names")
	workers := fs.Int("workers", 8, "parallel writers")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("fill: want one directory (a Maildir's new/ or cur/)")
	}
	dir := fs.Arg(0)
	suffix := ""
	if filepath.Base(filepath.Clean(dir)) == "cur" {
		suffix = ":2,S"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	hdr := "Return-Path: <a@bench.test>\nFrom: <a@bench.test>\nTo: <u@bench.test>\nSubject: pre-populated message %d\n\n"
	body := strings.ReplaceAll(string(makeBody(*size)), "\r\n", "\n")
	now := time.Now().Unix() - int64(*n) // older than anything delivered later
	pid := os.Getpid()
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		mu    sync.Mutex
		first error
	)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				msg := fmt.Sprintf(hdr, i) + body
				name := strconv.FormatInt(now+int64(i), 10) + ".M" + strconv.Itoa(i) + "P" + strconv.Itoa(pid) +
					"." + *host + ",S=" + strconv.Itoa(len(msg)) + suffix
				if err := os.WriteFile(filepath.Join(dir, name), []byte(msg), 0o600); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	_, err := io.WriteString(os.Stdout, fmt.Sprintf("wrote %d files to %s\n", *n, dir))
	return err
}
