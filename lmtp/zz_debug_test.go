package lmtp
import ("testing";"os";"context";"time")
func TestZZDebug(t *testing.T){
	b := newFakeBackend()
	ts := startServer(t, b, defaultOptions())
	ts.srv.smtp.Debug = os.Stderr
	c := ts.dial(t)
	c.hello()
	c.send("MAIL FROM:<sender@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
	c.expect("250 "); c.expect("250 "); c.expect("354 ")
	go func(){ ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second); defer cancel(); err := ts.srv.Shutdown(ctx); t.Logf("shutdown %v", err) }()
	time.Sleep(100*time.Millisecond)
	c.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	c.expect("250 2.0.0")
	time.Sleep(100*time.Millisecond)
	c.send("NOOP\r\n")
	t.Log(c.reply())
}
