// Command bareloop is the bare durable Maildir delivery loop, the yardstick
// nfsdrop is compared with on the lab's NFS clients: for each file, create
// it in tmp/, write it, fsync, link it into new/, unlink the tmp/ name,
// fsync new/. No user lookup, no headers, no quota: only the file system
// calls every durable Maildir delivery needs.
//
//	bareloop -dir DIR [-seconds 10] [-files N] [-size 2048] [-threads 1]
//
// With -files it stops after N files (or -seconds, whichever comes first),
// so that NFS calls can be counted per file over a known number.
//
// It prints one line: "bareloop files=N seconds=S files_per_s=R".
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	dir := flag.String("dir", "", "directory to make tmp/ and new/ in")
	seconds := flag.Float64("seconds", 10, "how long to run")
	size := flag.Int("size", 2048, "bytes per file")
	threads := flag.Int("threads", 1, "concurrent loops")
	limit := flag.Int64("files", 0, "stop after this many files (0: no limit)")
	probePaths := flag.String("probe", "", "instead: count the GETATTRs of stat variants on these paths (separated by commas)")
	flag.Parse()
	if *probePaths != "" {
		for _, p := range strings.Split(*probePaths, ",") {
			probe(p, 20)
		}
		return
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "bareloop: -dir is required")
		os.Exit(2)
	}
	host, _ := os.Hostname()
	tmp, nw := filepath.Join(*dir, "tmp"), filepath.Join(*dir, "new")
	for _, d := range []string{tmp, nw} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			fatal(err)
		}
	}
	data := make([]byte, *size)
	for i := range data {
		data[i] = 'a' + byte(i%26)
		if i%76 == 75 {
			data[i] = '\n'
		}
	}
	var files, claimed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for t := 0; t < *threads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				if *limit > 0 && claimed.Add(1) > *limit {
					return
				}
				name := fmt.Sprintf("%d.%d_%d_%d.%s", time.Now().Unix(), os.Getpid(), t, i, host)
				if err := one(filepath.Join(tmp, name), filepath.Join(nw, name), nw, data); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				files.Add(1)
			}
		}(t)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if err, _ := firstErr.Load().(error); err != nil {
		fmt.Fprintln(os.Stderr, "bareloop:", err)
	}
	fmt.Printf("bareloop files=%d seconds=%.3f files_per_s=%.1f\n", files.Load(), el, float64(files.Load())/el)
	if firstErr.Load() != nil {
		os.Exit(1)
	}
}

func one(tmpPath, newPath, newDir string, data []byte) error {
	f, err := os.OpenFile(tmpPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmpPath, newPath); err != nil {
		return err
	}
	if err := os.Remove(tmpPath); err != nil {
		return err
	}
	d, err := os.Open(newDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bareloop:", err)
	os.Exit(1)
}
