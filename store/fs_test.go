package store

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"golang.org/x/sys/unix"
)

// OSFS opens files without os.OpenFile (openUnpolled): the descriptor
// must still be close-on-exec (no hook or helper a daemon starts may
// inherit a mailbox file), blocking, made with the mode asked for, and a
// failure must be the *os.PathError the store's error checks expect.
func TestOSFSOpenFileDescriptor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	f, err := OSFS{}.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	fd := int(f.(osFile).f.Fd())
	fdFlags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fdFlags&unix.FD_CLOEXEC == 0 {
		t.Error("descriptor is not close-on-exec")
	}
	flFlags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flFlags&unix.O_NONBLOCK != 0 {
		t.Error("descriptor is non-blocking")
	}
	if _, err := f.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || fi.Size() != 5 {
		t.Errorf("file mode %v size %d, want -rw-r----- and 5", fi.Mode(), fi.Size())
	}

	_, err = OSFS{}.OpenFile(filepath.Join(dir, "missing"), os.O_RDONLY, 0)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "open" || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("open of a missing file: %#v, want *fs.PathError open ENOENT", err)
	}
	if err := (OSFS{}).SyncDir(dir); err != nil {
		t.Errorf("SyncDir: %v", err)
	}
	if err := (OSFS{}).SyncDir(filepath.Join(dir, "missing")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("SyncDir of a missing directory: %v, want ENOENT", err)
	}
}

// fill gathers a reader's pieces into one buffer (one write per buffer)
// and hands back the data read before an error together with the error.
func TestFill(t *testing.T) {
	buf := make([]byte, 8)
	n, err := fill(iotest.OneByteReader(strings.NewReader("0123456789")), buf)
	if n != 8 || err != nil || string(buf[:n]) != "01234567" {
		t.Errorf("full buffer: %d %v %q", n, err, buf[:n])
	}
	n, err = fill(iotest.HalfReader(strings.NewReader("abc")), buf)
	if n != 3 || err != io.EOF || string(buf[:n]) != "abc" {
		t.Errorf("short message: %d %v %q, want 3 EOF abc", n, err, buf[:n])
	}
	boom := errors.New("client gone")
	n, err = fill(io.MultiReader(strings.NewReader("xy"), iotest.ErrReader(boom)), buf)
	if n != 2 || err != boom {
		t.Errorf("error mid-message: %d %v, want 2 and the reader's error", n, err)
	}
}
