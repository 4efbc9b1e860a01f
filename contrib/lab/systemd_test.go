package lab

import (
	"context"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// TestSystemdVM is the short run of RunSystemd (what CI runs): a Debian
// machine with systemd as PID 1 boots from the cached image, its mail root
// an NFS mount from /etc/fstab; nfsdrop is installed from the signed APT
// repository with apt-get; the first mail from Postfix starts
// nfsdrop-lmtp.service through its socket and lands on NFS; STATUS=, POP3
// and POP3S, reload, clamd, the User=nfsdrop drop-in, systemd-analyze
// security and a journal free of sandbox refusals. The full run is `go run ./cmd/nfsdrop-lab -systemd`.
// The first run on a machine makes the root file system with debootstrap
// (a few minutes); later runs take it from the lab's cache.
func TestSystemdVM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	for _, prog := range []string{"debootstrap", "mkfs.ext4"} {
		if _, err := lookPath(prog); err != nil {
			if testenv.CI() {
				t.Fatalf("%s missing (./test.sh installs it)", prog)
			}
			t.Skipf("%s missing", prog)
		}
	}
	l := newTestLab(t, ctx)
	rep, err := RunSystemd(ctx, l, SystemdOptions{})
	if rep != nil {
		t.Logf("\n%s", rep)
	}
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed() {
		t.Fatal("a step failed (above)")
	}
}
