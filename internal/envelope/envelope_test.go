package envelope

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestReadHeader(t *testing.T) {
	msg := "Received: x\r\nDelivered-To: Alice@Example.org\r\nSubject: a\r\n folded\r\ndelivered-to:\r\n\t<bob@example.org>\r\n\r\nDelivered-To: body@example.org\r\n"
	h, r, err := ReadHeader(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(r)
	if string(all) != msg {
		t.Fatalf("message not preserved: %q", all)
	}
	if len(h.DeliveredTo) != 2 || !h.Looped("alice@example.org") || !h.Looped("BOB@example.org") || h.Looped("body@example.org") {
		t.Fatalf("DeliveredTo = %q", h.DeliveredTo)
	}
	// No header/body separator, bare LF, no trailing newline.
	for _, m := range []string{"", "Subject: x", "Subject: x\nDelivered-To: c@d\n\nbody", strings.Repeat("X-Long: "+strings.Repeat("a", 100000)+"\n", 3)} {
		h, r, err := ReadHeader(strings.NewReader(m))
		if err != nil {
			t.Fatal(err)
		}
		all, _ := io.ReadAll(r)
		if string(all) != m {
			t.Fatalf("%.40q not preserved", m)
		}
		if strings.Contains(m, "c@d") && !h.Looped("c@d") {
			t.Errorf("bare-LF header not parsed")
		}
	}
}

func TestTraceHeaders(t *testing.T) {
	if got := ReturnPath("a@b\r\nX-Evil: 1"); got != "Return-Path: <a@b??X-Evil: 1>\r\n" {
		t.Errorf("ReturnPath = %q", got)
	}
	r := Received("mx.example", "127.0.0.1", "drop1", "LMTP", "abc", "u@example.org", time.Unix(0, 0).UTC())
	if !strings.HasPrefix(r, "Received: from mx.example (127.0.0.1)\r\n\tby drop1 (nfsdrop) with LMTP id abc\r\n\tfor <u@example.org>; ") || !strings.HasSuffix(r, "\r\n") {
		t.Errorf("Received = %q", r)
	}
}

func TestQueueIDFromTopReceived(t *testing.T) {
	msg := "Received: from mx.test (localhost [127.0.0.1])\r\n\tby mx.test (Postfix) with ESMTP id 4F2A1C0123\r\n\tfor <a@b>; Wed, 25 Nov 2026 10:00:00 +0000\r\nReceived: by other with SMTP id OLDER;\r\n\r\nbody\r\n"
	h, _, err := ReadHeader(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if h.QueueID != "4F2A1C0123" {
		t.Errorf("QueueID = %q", h.QueueID)
	}
	h, _, _ = ReadHeader(strings.NewReader("Received: by x with SMTP id <bad\"id>;\r\n\r\n"))
	if h.QueueID != "" {
		t.Errorf("QueueID from a malformed id = %q", h.QueueID)
	}
}
