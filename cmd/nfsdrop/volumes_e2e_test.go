package main

// End-to-end test of volumes: the built lmtpd over two volumes below the
// mail root, users named on a volume by the passwd-file and users placed
// by the hash, driven by a raw LMTP client on loopback.

import (
	"fmt"
	"github.com/nfsdrop/nfsdrop/store"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// volumesE2EUsers: n1 named on f2 (home NAME:rel), n2 named on f1 (an
// absolute home under f1), p1..p6 placed.
func volumesE2EUsers(mailRoot string) string {
	var b strings.Builder
	b.WriteString("n1@example.test:{PLAIN}pw::::::home=f2:example.test/n1\n")
	fmt.Fprintf(&b, "n2@example.test:{PLAIN}pw::::%s/f1/homes/n2::\n", mailRoot)
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&b, "p%d@example.test:{PLAIN}pw::::::\n", i)
	}
	return b.String()
}

// startVolumesWorld runs lmtpd over two volumes, f1 and f2, below the
// mail root, with the users of volumesE2EUsers.
func startVolumesWorld(t *testing.T) *lmtpdWorld {
	t.Helper()
	w := newLmtpdWorld(t)
	for _, v := range []string{"f1", "f2"} {
		if err := os.MkdirAll(filepath.Join(w.mailRoot, v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(w.mailRoot, v, ".mounted-"+v), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(w.usersPath, []byte(volumesE2EUsers(w.mailRoot)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`hostname = "drop.test"

[store]
mail_root = %q
mount_marker = %q
volume_probe_interval = "200ms"

[[store.volumes]]
name = "f1"
path = %q
mount_marker = ".mounted-f1"

[[store.volumes]]
name = "f2"
path = %q
mount_marker = ".mounted-f2"

[userdb]
driver = "passwd-file"
passwd_file = "users"
default_domain = "example.test"

[lmtp]
listen = ["tcp:%s"]
`, w.mailRoot, lmtpdMarker, filepath.Join(w.mailRoot, "f1"), filepath.Join(w.mailRoot, "f2"), w.tcpAddr())
	if err := os.WriteFile(w.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	w.start()
	w.waitReady()
	return w
}

func TestVolumesLmtpdE2E(t *testing.T) {
	w := startVolumesWorld(t)

	placed := []string{"p1", "p2", "p3", "p4", "p5", "p6"}
	rcpts := append([]string{"n1", "n2"}, placed...)
	id := lmtpdID("volumes")
	replies := volumesSend(t, w, id, rcpts...)
	for _, r := range rcpts {
		if !strings.HasPrefix(replies[r], "250 ") {
			t.Errorf("%s: %q, want 250", r, replies[r])
		}
	}
	// Where each message is: exactly one copy, on the expected volume.
	where := func(local string) []string {
		var at []string
		for _, path := range []string{
			filepath.Join(w.mailRoot, "f1", "example.test", local, "Maildir"),
			filepath.Join(w.mailRoot, "f2", "example.test", local, "Maildir"),
			filepath.Join(w.mailRoot, "f1", "homes", local, "Maildir"),
			filepath.Join(w.mailRoot, "example.test", local, "Maildir"),
		} {
			ents, _ := os.ReadDir(filepath.Join(path, "new"))
			for range ents {
				at = append(at, path)
			}
		}
		return at
	}
	if at := where("n1"); len(at) != 1 || !strings.HasPrefix(at[0], filepath.Join(w.mailRoot, "f2")+"/") {
		t.Errorf("n1 (named f2): stored at %v", at)
	}
	if at := where("n2"); len(at) != 1 || at[0] != filepath.Join(w.mailRoot, "f1", "homes", "n2", "Maildir") {
		t.Errorf("n2 (absolute home on f1): stored at %v", at)
	}
	perVolume := map[string]int{}
	for _, p := range placed {
		at := where(p)
		if len(at) != 1 || strings.HasPrefix(at[0], filepath.Join(w.mailRoot, "example.test")) {
			t.Errorf("%s (placed): stored at %v, want one copy on a volume", p, at)
			continue
		}
		perVolume[filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(at[0]))))]++
	}
	if perVolume["f1"] == 0 || perVolume["f2"] == 0 {
		t.Logf("placed users per volume: %v (six users may all land on one)", perVolume)
	}

	// user lookup and check say where each user lives.
	out, err := exec.Command(testenv.Binary(t), "user", "lookup", "-c", w.cfgPath, "n1@example.test").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "volume:   f2 (named by the user database)") {
		t.Errorf("user lookup n1: %v\n%s", err, out)
	}
	out, err = exec.Command(testenv.Binary(t), "check", "-c", w.cfgPath, "p1@example.test", "n2@example.test").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "p1@example.test: f") || !strings.Contains(string(out), "(placed)") ||
		!strings.Contains(string(out), "n2@example.test: f1 (named by the user database)") || !strings.Contains(string(out), "[[store.volumes]]") {
		t.Errorf("check: %v\n%s", err, out)
	}

	// f2 unmounted (its marker gone): its users wait, f1's are served.
	if err := os.Remove(filepath.Join(w.mailRoot, "f2", ".mounted-f2")); err != nil {
		t.Fatal(err)
	}
	replies = volumesSend(t, w, lmtpdID("volumes-f2-down"), "n1", "n2")
	if !strings.HasPrefix(replies["n1"], "451 4.3.0") || strings.Contains(replies["n1"], w.mailRoot) {
		t.Errorf("n1 with f2 unmounted: %q, want 451 4.3.0 without a path", replies["n1"])
	}
	if !strings.HasPrefix(replies["n2"], "250 ") {
		t.Errorf("n2 on f1 with f2 unmounted: %q, want 250", replies["n2"])
	}
	if len(where("n1")) != 1 || len(where("n2")) != 2 {
		t.Errorf("after f2 went away: n1 has %d messages (want 1), n2 %d (want 2)", len(where("n1")), len(where("n2")))
	}

	// The health probe notices the missing marker: f2 is marked down and
	// its users are refused already at RCPT, with no call to the filer.
	w.waitLog(`volume down.*volume=f2`, 10*time.Second)
	if r := volumesRcpt(t, w, "n1"); !strings.HasPrefix(r, "451 4.3.0") || strings.Contains(r, w.mailRoot) {
		t.Errorf("RCPT n1 with f2 marked down: %q, want 451 4.3.0 without a path", r)
	}
	if r := volumesRcpt(t, w, "n2"); !strings.HasPrefix(r, "250 ") {
		t.Errorf("RCPT n2 on f1 with f2 marked down: %q, want 250", r)
	}
	// Back: the probe marks f2 up and its users are delivered again.
	if err := os.WriteFile(filepath.Join(w.mailRoot, "f2", ".mounted-f2"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w.waitLog(`volume up again.*volume=f2`, 10*time.Second)
	if r := volumesSend(t, w, lmtpdID("volumes-f2-up"), "n1"); !strings.HasPrefix(r["n1"], "250 ") {
		t.Errorf("n1 with f2 up again: %q, want 250", r["n1"])
	}
	if len(where("n1")) != 2 {
		t.Errorf("n1 has %d messages after f2 came back, want 2", len(where("n1")))
	}
}

// volumesRcpt returns the RCPT reply for local@example.test (and resets).
func volumesRcpt(t *testing.T, w *lmtpdWorld, local string) string {
	t.Helper()
	c := lmtpdDial(t, "tcp", w.tcpAddr())
	defer c.Close()
	c.send("LHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<sender@remote.test>\r\n")
	c.expect("250 ")
	c.send("RCPT TO:<" + local + "@example.test>\r\n")
	r := c.reply()
	c.send("QUIT\r\n")
	return r
}

// volumesSend sends one message to the local parts at example.test and
// returns each one's final reply: its RCPT reply when refused, else its
// reply after DATA.
func volumesSend(t *testing.T, w *lmtpdWorld, id string, locals ...string) map[string]string {
	t.Helper()
	c := lmtpdDial(t, "tcp", w.tcpAddr())
	defer c.Close()
	c.send("LHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<sender@remote.test>\r\n")
	c.expect("250 ")
	out := map[string]string{}
	var accepted []string
	for _, l := range locals {
		c.send("RCPT TO:<" + l + "@example.test>\r\n")
		if r := c.reply(); strings.HasPrefix(r, "250") {
			accepted = append(accepted, l)
		} else {
			out[l] = r
		}
	}
	if len(accepted) > 0 {
		c.send("DATA\r\n")
		c.expect("354 ")
		c.send(string(lmtpdMessage(id, 2000)) + ".\r\n")
		for _, l := range accepted {
			out[l] = c.reply()
		}
	}
	c.send("QUIT\r\n")
	c.expect("221 ")
	return out
}

// TestMaildirMoveE2E: `nfsdrop maildir move` moves a user's Maildir to
// another volume while lmtpd runs: the same message names (UIDLs) on the
// new volume, nothing live left on the old one but the tombstone, and the
// next delivery (the user database still naming the old place) follows
// the tombstone. Run again it finds the move done; --status says so.
func TestMaildirMoveE2E(t *testing.T) {
	w := startVolumesWorld(t)
	oldMd := filepath.Join(w.mailRoot, "f1", "homes", "n2", "Maildir")
	newMd := filepath.Join(w.mailRoot, "f2", "homes", "n2", "Maildir")
	for i := range 3 {
		if r := volumesSend(t, w, lmtpdID(fmt.Sprintf("before-move-%d", i)), "n2"); !strings.HasPrefix(r["n2"], "250 ") {
			t.Fatalf("delivery before the move: %q", r["n2"])
		}
	}
	before := dirNames(t, filepath.Join(oldMd, "new"))
	if len(before) != 3 {
		t.Fatalf("%d messages before the move, want 3", len(before))
	}
	move := func(args ...string) (string, int) {
		cmd := exec.Command(testenv.Binary(t), append([]string{"maildir", "move", "-c", w.cfgPath}, args...)...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	out, code := move("n2@example.test", "f2")
	if code != 0 || !strings.Contains(out, "moved from f1 to f2: 3 messages") || !strings.Contains(out, "f2:homes/n2/Maildir") {
		t.Fatalf("maildir move: exit %d\n%s", code, out)
	}
	if after := dirNames(t, filepath.Join(newMd, "new")); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("names on f2 %v, want the same as before the move %v (UIDLs)", after, before)
	}
	if left := dirNames(t, oldMd); strings.Join(left, " ") != store.LockName {
		t.Errorf("old Maildir holds %v, want only the tombstone", left)
	}
	if r := volumesSend(t, w, lmtpdID("after-move"), "n2"); !strings.HasPrefix(r["n2"], "250 ") {
		t.Fatalf("delivery after the move: %q", r["n2"])
	}
	if n := len(dirNames(t, filepath.Join(newMd, "new"))); n != 4 {
		t.Errorf("f2 holds %d messages after one more delivery, want 4", n)
	}
	if _, err := os.Stat(filepath.Join(oldMd, "new")); !os.IsNotExist(err) {
		t.Errorf("old Maildir's new/ came back: %v", err)
	}
	if out, code := move("n2@example.test", "f2"); code != 0 {
		t.Errorf("maildir move run again: exit %d\n%s", code, out)
	}
	if out, code := move("--status", "n2@example.test", "f2"); code != 0 || !strings.Contains(out, ": done") {
		t.Errorf("maildir move --status: exit %d\n%s", code, out)
	}
	if out, code := move("n2@example.test", "nosuch"); code != exUsage {
		t.Errorf("move to an unknown volume: exit %d, want %d\n%s", code, exUsage, out)
	}
}

// dirNames lists dir's entries, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
