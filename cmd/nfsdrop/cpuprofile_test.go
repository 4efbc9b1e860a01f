package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
)

// NFSDROP_CPUPROFILE (the benchmarks' profiling aid): a profile is
// written when the command ends, nothing happens when it is unset, and a
// path that cannot be written is reported without stopping the command.
func TestStartCPUProfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cpu.pprof")
	var stderr bytes.Buffer
	stop := startCPUProfile(path, &stderr)
	for i := 0; i < 1e6; i++ {
		_ = strings.Repeat("x", i%7) // something to sample
	}
	stop()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("profile not written: %v", err)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}

	startCPUProfile("", &stderr)() // unset: a no-op
	if stderr.Len() != 0 {
		t.Errorf("unset: stderr %q", stderr.String())
	}
	// Profiling is off again: another profile can start.
	if err := pprof.StartCPUProfile(&bytes.Buffer{}); err != nil {
		t.Fatalf("profiling left running: %v", err)
	}
	pprof.StopCPUProfile()

	startCPUProfile(filepath.Join(dir, "missing", "cpu.pprof"), &stderr)()
	if !strings.Contains(stderr.String(), cpuProfileEnv) {
		t.Errorf("unwritable path not reported: %q", stderr.String())
	}
}
