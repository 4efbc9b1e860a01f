package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkDeliver compares durable deliveries of 2 KB messages through the
// store with a bare loop of the same syscalls at the same durability
// (create, write, fsync, close, link, unlink, fsync of new/), with 1, 4 and
// 16 goroutines, into one Maildir and into one Maildir per goroutine.
// Run: go test -run '^$' -bench Deliver -benchtime 2000x ./store/
// (set NFSDROP_BENCH_DIR to benchmark on another filesystem, e.g. NFS;
// NFSDROP_BENCH_KEEP=1 leaves the files there).
func BenchmarkDeliver(b *testing.B) {
	msg := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"), 32) // 2 KB
	for _, shared := range []bool{true, false} {
		for _, workers := range []int{1, 4, 16} {
			layout := "separate"
			if shared {
				layout = "one-maildir"
			}
			b.Run(fmt.Sprintf("bare/%s/g%d", layout, workers), func(b *testing.B) {
				root := benchRoot(b)
				runWorkers(b, workers, func(w int) func(i int) error {
					dir := filepath.Join(root, "box"+strconv.Itoa(boxIndex(shared, w)))
					for _, sub := range []string{"tmp", "new", "cur"} {
						os.MkdirAll(filepath.Join(dir, sub), 0o700)
					}
					return func(i int) error { return bareDeliver(dir, w, i, msg) }
				})
			})
			b.Run(fmt.Sprintf("store/%s/g%d", layout, workers), func(b *testing.B) {
				root := benchRoot(b)
				os.WriteFile(filepath.Join(root, testMarker), nil, 0o600)
				no := false
				s, err := New(Options{MailRoot: root, MountMarker: testMarker, Hostname: "bench", Chown: &no})
				if err != nil {
					b.Fatal(err)
				}
				runWorkers(b, workers, func(w int) func(i int) error {
					mb := Mailbox{Path: filepath.Join(root, "box"+strconv.Itoa(boxIndex(shared, w))), UID: -1, GID: -1}
					return func(int) error { _, err := s.Deliver(mb, bytes.NewReader(msg)); return err }
				})
			})
		}
	}
}

func benchRoot(b *testing.B) string {
	if d := os.Getenv("NFSDROP_BENCH_DIR"); d != "" {
		root, err := os.MkdirTemp(d, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if os.Getenv("NFSDROP_BENCH_KEEP") == "" {
			// Kept with NFSDROP_BENCH_KEEP=1 (bench/lmtp-variants.sh's
			// floor row): on a journal-less ext4, removing thousands
			// of files makes the next creates dearer for half a minute
			// (recently deleted inodes are skipped), which would bill
			// the benchmark's cleanup to the rows measured after it.
			b.Cleanup(func() { os.RemoveAll(root) })
		}
		return root
	}
	return b.TempDir()
}

func boxIndex(shared bool, w int) int {
	if shared {
		return 0
	}
	return w
}

// runWorkers splits b.N deliveries over n goroutines and reports
// deliveries/s and the process's CPU time (user+sys, getrusage) per
// delivery: on a shared machine the rate follows the other load, the CPU
// time much less.
func runWorkers(b *testing.B, n int, setup func(w int) func(i int) error) {
	fns := make([]func(int) error, n)
	for w := range fns {
		fns[w] = setup(w)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	b.ResetTimer()
	cpu0 := processCPU(b)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(fn func(int) error) {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := fn(int(i)); err != nil {
					errs <- err
					return
				}
			}
		}(fns[w])
	}
	wg.Wait()
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
}

// processCPU is the user+system CPU time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bareDeliver is the durable Maildir loop with nothing else: the floor
// against which the store's overhead is measured.
func bareDeliver(dir string, w, i int, msg []byte) error {
	name := strconv.Itoa(w) + "." + strconv.Itoa(i) + ".bare"
	tmp := filepath.Join(dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(msg); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, filepath.Join(dir, "new", name)); err != nil {
		return err
	}
	if err := os.Remove(tmp); err != nil {
		return err
	}
	d, err := os.Open(filepath.Join(dir, "new"))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
