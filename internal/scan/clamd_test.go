package scan

// Integration tests against a real clamd (Debian package clamav-daemon),
// started by the test with a database of one signature, made from the
// EICAR test string (internal/testenv/clamd).

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv/clamd"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// cleanMail is a plain message of about size bytes.
func cleanMail(size int) []byte {
	const head = "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hello\r\n" +
		"Message-ID: <1@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
	const line = "The quick brown fox jumps over the lazy dog. 0123456789\r\n"
	return []byte(head + strings.Repeat(line, max(0, size-len(head))/len(line)+1))
}

// eicarMail is a multipart message carrying EICAR as a base64 attachment,
// so clamd must decode the MIME part to find it.
func eicarMail() []byte {
	enc := base64.StdEncoding.EncodeToString([]byte(clamd.EICAR))
	return []byte("From: mallory@example.org\r\nTo: bob@example.org\r\nSubject: invoice\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n" +
		"--b1\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\n" +
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"invoice.com\"\r\n\r\n" +
		enc + "\r\n--b1--\r\n")
}

func wantVirus(t *testing.T, res Result, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if res.Clean || !strings.Contains(res.Signature, "EICAR") {
		t.Fatalf("EICAR mail: %+v", res)
	}
	if fe := failure.As(res.Err()); fe == nil || fe.Kind != failure.Virus || fe.Detail != res.Signature {
		t.Errorf("Err() = %v", res.Err())
	}
}

func TestClamdVerdicts(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{})
	if bytes.Contains(eicarMail(), []byte(clamd.EICAR)) {
		t.Fatal("the test mail carries EICAR in the clear; it must be base64")
	}
	for _, addr := range cd.Addresses() {
		t.Run(strings.Split(addr, ":")[0], func(t *testing.T) {
			s := newScanner(t, Options{Addresses: []string{addr}, Timeout: 10 * time.Second})
			if err := s.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
			res, err := s.Scan(context.Background(), bytes.NewReader(cleanMail(200_000)))
			if err != nil || !res.Clean || res.Infected() || res.Server != addr {
				t.Fatalf("clean mail: %+v, %v", res, err)
			}
			res, err = s.Scan(context.Background(), bytes.NewReader(eicarMail()))
			wantVirus(t, res, err)
			if res.Server != addr {
				t.Errorf("Server = %q", res.Server)
			}
			t.Logf("EICAR: %s FOUND", res.Signature)
		})
	}
}

// Tee: the delivery writes the message to its tmp/ file and gets the
// verdict from the same pass.
func TestClamdTee(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{})
	s := newScanner(t, Options{Addresses: cd.Addresses(), ChunkSize: 8192})
	dir := t.TempDir()
	for i, msg := range [][]byte{cleanMail(300_000), eicarMail(), cleanMail(10)} {
		path := filepath.Join(dir, fmt.Sprint(i))
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		r, verdict := s.Tee(context.Background(), bytes.NewReader(msg))
		if _, err := io.Copy(f, r); err != nil {
			t.Fatal(err)
		}
		f.Close()
		res, err := verdict()
		if i == 1 {
			wantVirus(t, res, err)
		} else if err != nil || !res.Clean {
			t.Errorf("%d: %+v, %v", i, res, err)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got, msg) {
			t.Errorf("%d: the file differs from the message (%d bytes, want %d)", i, len(got), len(msg))
		}
	}
}

// Concurrent scans, each on its own connection, get their own verdicts.
func TestClamdConcurrent(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{})
	s := newScanner(t, Options{Addresses: cd.Addresses()})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			virus := i%3 == 0
			msg := cleanMail(4096 + i*1000)
			if virus {
				msg = eicarMail()
			}
			res, err := s.Scan(context.Background(), bytes.NewReader(msg))
			if err != nil || res.Infected() != virus || res.Clean == virus {
				errs <- fmt.Errorf("scan %d (virus %v): %+v, %v", i, virus, res, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClamdKilled(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{})
	s := newScanner(t, Options{Addresses: cd.Addresses(), Timeout: 5 * time.Second})
	if res, err := s.Scan(context.Background(), bytes.NewReader(cleanMail(100))); err != nil || !res.Clean {
		t.Fatalf("before the kill: %+v, %v", res, err)
	}
	cd.Kill()
	start := time.Now()
	_, err := s.Scan(context.Background(), bytes.NewReader(cleanMail(100)))
	wantTemp(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a refused connection took %v", d)
	}
	wantTemp(t, s.Ping(context.Background()), ErrUnavailable)
}

// A frozen clamd accepts connections (the kernel does) but never answers:
// the deadline must end the scan.
func TestClamdStopped(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{})
	const timeout = 300 * time.Millisecond
	for _, size := range []int{4096, 4 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := newScanner(t, Options{Addresses: []string{cd.UnixAddress()}, Timeout: timeout})
			cd.Stop()
			defer cd.Cont()
			start := time.Now()
			_, err := s.Scan(context.Background(), bytes.NewReader(cleanMail(size)))
			d := time.Since(start)
			wantTemp(t, err, ErrUnavailable)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("err = %v, want a deadline", err)
			}
			if d < timeout || d > timeout+2*time.Second {
				t.Errorf("took %v with a %v timeout", d, timeout)
			}

			// Tee: the reader passes everything through, the verdict is
			// Temporary.
			msg := cleanMail(size)
			r, verdict := s.Tee(context.Background(), bytes.NewReader(msg))
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("Tee passed %d of %d bytes, %v", len(got), len(msg), err)
			}
			_, err = verdict()
			wantTemp(t, err, ErrUnavailable)
		})
	}
	// Thawed, it answers again.
	s := newScanner(t, Options{Addresses: cd.Addresses()})
	if res, err := s.Scan(context.Background(), bytes.NewReader(cleanMail(100))); err != nil || !res.Clean {
		t.Errorf("after SIGCONT: %+v, %v", res, err)
	}
}

// clamd's StreamMaxLength is 1M here. A longer message gets what
// OnTooLarge says, whether this side knows the limit (and stops after 1M)
// or not (and learns it from clamd's "INSTREAM size limit exceeded").
func TestClamdTooLarge(t *testing.T) {
	cd := clamd.StartT(t, clamd.Options{StreamMaxLength: "1M"})
	const limit = 1 << 20
	big := cleanMail(2 << 20)
	for _, known := range []int64{limit, 0} {
		for _, onTooLarge := range []string{TooLargeTempfail, TooLargeSkip} {
			t.Run(fmt.Sprintf("known=%v/%s", known != 0, onTooLarge), func(t *testing.T) {
				s := newScanner(t, Options{Addresses: cd.Addresses(), StreamMaxLength: known, OnTooLarge: onTooLarge, Timeout: 10 * time.Second})
				check := func(res Result, err error) {
					t.Helper()
					if onTooLarge == TooLargeSkip {
						if err != nil || !res.Skipped || res.Clean || res.Server == "" {
							t.Errorf("%+v, %v", res, err)
						}
						return
					}
					wantTemp(t, err, ErrTooLarge)
				}
				check(s.Scan(context.Background(), bytes.NewReader(big)))

				r, verdict := s.Tee(context.Background(), bytes.NewReader(big))
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, big) {
					t.Fatalf("Tee passed %d of %d bytes, %v", len(got), len(big), err)
				}
				check(verdict())

				// Up to the limit is scanned.
				msg := cleanMail(limit - 100)
				msg = append(msg[:limit-len(clamd.EICAR)-2], "\n"+clamd.EICAR+"\n"...)
				res, err := s.Scan(context.Background(), bytes.NewReader(msg))
				if err != nil || !strings.Contains(res.Signature, "EICAR") {
					t.Errorf("%d bytes ending in EICAR: %+v, %v", len(msg), res, err)
				}
			})
		}
	}
}

// BenchmarkScan measures scans of 4 KB messages against a real clamd over
// its Unix socket, one at a time and concurrently.
func BenchmarkScan(b *testing.B) {
	cd := clamd.StartT(b, clamd.Options{})
	s, err := New(Options{Addresses: []string{cd.UnixAddress()}})
	if err != nil {
		b.Fatal(err)
	}
	msg := cleanMail(4096)[:4096]
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if res, err := s.Scan(context.Background(), bytes.NewReader(msg)); err != nil || !res.Clean {
				b.Fatal(res, err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if res, err := s.Scan(context.Background(), bytes.NewReader(msg)); err != nil || !res.Clean {
					b.Error(res, err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
