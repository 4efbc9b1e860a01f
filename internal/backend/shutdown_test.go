package backend

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testkit"
)

// SIGTERM while a filer hangs (issue 16): a delivery stuck in a filesystem
// call that never returns does not hold the shutdown beyond its bound
// (lmtp.shutdown_timeout, the context here). Its connection is closed
// without an answer, so the message is not acknowledged and Postfix
// sends it again: nothing is lost. The process then exits (a goroutine in
// a hard-mounted NFS call is ended by the kernel with the process, which
// the lab shows); run.go waits for nothing else that touches the store.
func TestShutdownWhileFilerHangs(t *testing.T) {
	w := newWorld(t, worldOpts{}, "alice")
	entered := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	w.setHook(func(op, path string) (error, bool) {
		if op == "syncdir" && strings.Contains(path, "/new") {
			close(entered)
			<-release // the filer never answers while the test runs
			return &os.PathError{Op: "fsync", Path: path, Err: syscall.EIO}, false
		}
		return nil, false
	})
	c := testkit.Dial(t, "tcp", w.addr)
	c.ExpectReply("220 ")
	c.Send("LHLO client.test")
	c.ExpectReply("250 ")
	c.Send("MAIL FROM:<sender@example.net>")
	c.ExpectReply("250 ")
	c.Send("RCPT TO:<alice@" + testDomain + ">")
	c.ExpectReply("250 ")
	c.Send("DATA")
	c.ExpectReply("354 ")
	c.Raw(dotStuffed(testMsg) + ".\r\n")
	<-entered

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.srv.Shutdown(ctx) }()
	if err := <-done; err == nil {
		t.Fatal("Shutdown reported a clean drain although a delivery was stuck")
	}
	// The client sees the connection end with no answer for alice.
	c.ExpectEOF()
}
