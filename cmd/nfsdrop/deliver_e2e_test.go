package main

// End-to-end tests of `nfsdrop deliver`: the built binary, run as Postfix's
// pipe(8) or local(8) mailbox_command runs it, against real directories
// (and, as root, a real full tmpfs and a real unprivileged user). They check
// the exit codes (exitCode in sysexits.go, documented in docs/postfix.md)
// and the Maildir rules of docs/store.md: nothing partial is ever visible in
// new/, a delivery that answered 0 is complete, refused deliveries leave
// nothing behind.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

const e2eSender = "sender@example.net"

// ---------------------------------------------------------------------------
// 1. SIGKILL at random points.

// killRun is one delivery of the SIGKILL test: what is sent, and how it
// ended.
type killRun struct {
	token string
	msg   []byte
	rcpts []string
	delay time.Duration // SIGKILL this long after start
	chunk int           // bytes per write to the pipe
	pace  time.Duration // pause between writes

	killed bool
	code   int
	stderr string
}

var tokenRE = regexp.MustCompile(`X-E2E-Token: (tok-[0-9]+-[0-9a-f]{8})\r\n`)

// TestDeliverE2ESIGKILL kills deliveries with SIGKILL at random points
// (before the message is read, mid-write, during fsync, between link and
// unlink, after publishing) and checks the Maildir invariants: every run
// that exited 0 is complete and byte-exact in new/, no partial file is ever
// visible in new/ or cur/ (checked continuously while the runs go on and at
// the end), a run that exited 0 leaves nothing in tmp/, and the sweeper
// empties tmp/ without touching new/.
//
// E2E_SEED=n replays a run's plan (the kill timing depends on the machine).
func TestDeliverE2ESIGKILL(t *testing.T) {
	const (
		runs    = 300
		workers = 4
		minSize = 1 << 10
		maxSize = 2 << 20
	)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("E2E_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("E2E_SEED: %v", err)
		}
	}
	t.Logf("seed %d (E2E_SEED=%d replays the plan)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6e6673))

	e := newE2E(t, e2eOpts{})
	users := map[string]string{ // address -> Maildir
		"alice@example.org": e.maildir("alice"),
		"bob@example.org":   e.maildir("bob"),
	}

	// A text body to cut messages from: hex lines, mostly CRLF, some bare LF.
	filler := make([]byte, 0, maxSize+4096)
	for len(filler) < maxSize+2048 {
		var raw [38]byte
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		filler = hex.AppendEncode(filler, raw[:])
		if rng.IntN(8) == 0 {
			filler = append(filler, '\n')
		} else {
			filler = append(filler, '\r', '\n')
		}
	}

	plan := make([]*killRun, runs)
	byToken := make(map[string]*killRun, runs)
	for i := range plan {
		r := &killRun{
			token: fmt.Sprintf("tok-%d-%08x", i, rng.Uint32()),
			rcpts: []string{"alice@example.org"},
			// Spread over 0-30 ms: process start, reading, writing,
			// fsync, link, exit.
			delay: time.Duration(rng.Int64N(int64(30 * time.Millisecond))),
			chunk: 4<<10 + rng.IntN(60<<10),
			pace:  time.Duration(rng.Int64N(int64(300 * time.Microsecond))),
		}
		if i%10 == 0 {
			// Every tenth run has time to finish, so both outcomes
			// occur however loaded the machine is (the others decide
			// where the kills land).
			r.delay = 5 * time.Second
		}
		if rng.IntN(6) == 0 {
			r.rcpts = append(r.rcpts, "bob@example.org") // one staged file, two links
		}
		// Log-uniform size: many small messages, some up to 2 MB.
		size := int(math.Exp(math.Log(minSize) + rng.Float64()*(math.Log(maxSize)-math.Log(minSize))))
		off := rng.IntN(len(filler) - size)
		r.msg = fmt.Appendf(nil, "From: Sender <%s>\r\nTo: %s\r\nSubject: kill run %d\r\nX-E2E-Token: %s\r\n\r\n",
			e2eSender, strings.Join(r.rcpts, ", "), i, r.token)
		r.msg = append(r.msg, filler[off:off+size]...)
		r.msg = append(r.msg, "\r\n-- end of "+r.token+"\r\n"...)
		plan[i] = r
		byToken[r.token] = r
	}

	// verifyNew checks one file in a Maildir's new/ against the plan: any
	// file there must be a complete message of a run to that recipient.
	verifyNew := func(rcpt, name string, data []byte) (string, error) {
		m := tokenRE.FindSubmatch(data)
		if m == nil {
			return "", fmt.Errorf("new/%s (%d bytes) carries no token: not a complete message", name, len(data))
		}
		r := byToken[string(m[1])]
		if r == nil {
			return "", fmt.Errorf("new/%s carries unknown token %s", name, m[1])
		}
		if !slices.Contains(r.rcpts, rcpt) {
			return "", fmt.Errorf("new/%s of %s holds run %s, which was not for it", name, rcpt, r.token)
		}
		single := ""
		if len(r.rcpts) == 1 {
			single = rcpt
		}
		if err := checkDelivered(name, data, r.msg, e2eSender, single); err != nil {
			return "", fmt.Errorf("new/%s (run %s): %v", name, r.token, err)
		}
		return r.token, nil
	}

	// A watcher checks every file as it appears in new/ while the runs go
	// on: a partial file visible even for a moment is a failure.
	var (
		watchMu sync.Mutex
		seen    = make(map[string]bool) // path in new/ -> checked
	)
	scan := func() {
		for rcpt, md := range users {
			ents, err := os.ReadDir(filepath.Join(md, "new"))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("listing new/: %v", err)
			}
			for _, ent := range ents {
				n := ent.Name()
				p := filepath.Join(md, "new", n)
				watchMu.Lock()
				done := seen[p]
				seen[p] = true
				watchMu.Unlock()
				if done {
					continue
				}
				data, err := os.ReadFile(p)
				if err != nil {
					t.Errorf("reading %s: %v", p, err)
					continue
				}
				if _, err := verifyNew(rcpt, n, data); err != nil {
					t.Errorf("while deliveries run: %v", err)
				}
			}
		}
	}
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
				scan()
			}
		}
	}()

	start := time.Now()
	jobs := make(chan *killRun)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range jobs {
				e.killDeliver(t, r)
			}
		}()
	}
	for _, r := range plan {
		jobs <- r
	}
	close(jobs)
	wg.Wait()
	close(stopWatch)
	<-watchDone
	scan()
	elapsed := time.Since(start)

	// Tally the runs. Anything but exit 0 or SIGKILL is a failure.
	exited0, killed := 0, 0
	for _, r := range plan {
		switch {
		case r.killed:
			killed++
		case r.code == 0:
			exited0++
		default:
			t.Errorf("run %s (%d bytes) exited %d without being killed:\n%s", r.token, len(r.msg), r.code, r.stderr)
		}
	}

	// new/: every file is a complete message (verifyNew), no run twice,
	// and every run that exited 0 is there for each of its recipients.
	type where struct{ rcpt, token string }
	inNew := make(map[where]string) // -> path
	newInode := make(map[[2]uint64]bool)
	for rcpt, md := range users {
		for _, n := range names(t, filepath.Join(md, "new")) {
			p := filepath.Join(md, "new", n)
			data := readFile(t, p)
			tok, err := verifyNew(rcpt, n, data)
			if err != nil {
				t.Error(err)
				continue
			}
			k := where{rcpt, tok}
			if prev, dup := inNew[k]; dup {
				t.Errorf("run %s is twice in %s's new/: %s and %s", tok, rcpt, prev, n)
			}
			inNew[k] = p
			st := statT(t, p)
			newInode[[2]uint64{st.Dev, st.Ino}] = true
		}
		wantEmpty(t, filepath.Join(md, "cur"))
	}
	killedDelivered := 0
	for _, r := range plan {
		all := true
		for _, rcpt := range r.rcpts {
			_, ok := inNew[where{rcpt, r.token}]
			all = all && ok
			if !ok && !r.killed && r.code == 0 {
				t.Errorf("run %s exited 0 but is not in %s's new/", r.token, rcpt)
			}
		}
		if r.killed && all {
			killedDelivered++
		}
	}

	// tmp/: what the killed runs left, in the recipients' tmp/ (one
	// recipient) and the spool's (several). A run that exited 0 must leave
	// nothing (it removes its staged file before answering).
	var (
		tmpFiles                         []string
		tmpPartial, tmpStaged, tmpLinked int
	)
	spoolTmp := filepath.Join(e.root, store.SpoolName, "tmp")
	tmpDirs := []string{spoolTmp}
	for _, md := range users {
		tmpDirs = append(tmpDirs, filepath.Join(md, "tmp"))
	}
	for _, dir := range tmpDirs {
		for _, n := range names(t, dir) {
			p := filepath.Join(dir, n)
			tmpFiles = append(tmpFiles, p)
			data := readFile(t, p)
			m := tokenRE.FindSubmatch(data)
			var r *killRun
			if m != nil {
				r = byToken[string(m[1])]
			}
			if r != nil && !r.killed {
				t.Errorf("tmp/%s belongs to run %s, which exited %d: a finished delivery must remove its tmp file", n, r.token, r.code)
			}
			st := statT(t, p)
			switch {
			case r == nil || len(data) < len(r.msg) || !bytes.Equal(data[len(data)-len(r.msg):], r.msg):
				tmpPartial++ // killed while writing
			case newInode[[2]uint64{st.Dev, st.Ino}]:
				tmpLinked++ // killed between link into new/ and unlink of tmp/
			default:
				tmpStaged++ // killed after writing (fsync), before link
			}
		}
	}
	t.Logf("%d runs in %v: %d exited 0, %d killed (%d of them complete in new/ anyway)",
		runs, elapsed.Round(time.Millisecond), exited0, killed, killedDelivered)
	t.Logf("left in tmp/ by killed runs: %d partial (mid-write), %d complete but not linked (fsync..link), %d linked but not unlinked (link..unlink)",
		tmpPartial, tmpStaged, tmpLinked)
	if exited0 == 0 || killed == 0 {
		t.Errorf("the kill timing did not spread: %d exited 0, %d killed", exited0, killed)
	}

	// A run killed inside EnsureMaildir can leave a Maildir with cur/ but
	// no tmp/ yet (it makes cur/, new/, tmp/ in that order; seen on a
	// loaded machine). The next delivery completes it, and so does this,
	// through the same code, before the sweeper and "maildir check" look.
	heal, err := store.New(store.Options{MailRoot: e.root, MountMarker: e2eMarker, Hostname: e2eHost})
	if err != nil {
		t.Fatal(err)
	}
	for _, md := range users {
		if err := heal.EnsureMaildir(store.Mailbox{Path: md, UID: -1, GID: -1}); err != nil {
			t.Fatalf("completing %s: %v", md, err)
		}
	}

	// The sweeper. SweepTmp's contract (store/sweep.go, as Dovecot's
	// unlink_old_files) wants both mtime and ctime older than the limit.
	// os.Chtimes can age mtime but not ctime (the kernel sets it to now),
	// so the binary, which reads the real clock, must leave these files:
	// its `maildir clean` is checked for leaving tmp/ and new/ untouched.
	// The removal itself is then checked with the same store code and a
	// clock 37 hours ahead.
	old := time.Now().Add(-store.TmpMaxAge - time.Hour)
	for _, p := range tmpFiles {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	before := newSnapshot(t, users)
	res := e.run(nil, nil, "maildir", "clean", "-c", e.cfg, e.root)
	wantCode(t, res, 0)
	if want := fmt.Sprintf("removed 0 old tmp files in %d maildirs", len(users)); !strings.Contains(res.stdout, want) {
		t.Errorf("maildir clean said %q, want %q (the files' ctime is fresh)", res.stdout, want)
	}
	st, err := store.New(store.Options{
		MailRoot: e.root, MountMarker: e2eMarker, Hostname: e2eHost,
		Now: func() time.Time { return time.Now().Add(store.TmpMaxAge + time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	removed, maildirs, err := st.SweepTree(e.root, store.TmpMaxAge, false)
	if err != nil {
		t.Fatal(err)
	}
	if removed != len(tmpFiles) || maildirs != len(users) {
		t.Errorf("sweep removed %d files in %d maildirs, want %d in %d", removed, maildirs, len(tmpFiles), len(users))
	}
	for _, md := range users {
		wantEmpty(t, filepath.Join(md, "tmp"), filepath.Join(md, "cur"))
	}
	wantEmpty(t, spoolTmp)
	if after := newSnapshot(t, users); !slices.Equal(before, after) {
		t.Errorf("the sweep changed new/:\nbefore %q\nafter  %q", before, after)
	}
	// And the binary's view of the result.
	for _, md := range users {
		res := e.run(nil, nil, "maildir", "check", "-c", e.cfg, md)
		wantCode(t, res, 0)
		if !strings.Contains(res.stdout, "tmp: 0 files") {
			t.Errorf("maildir check %s: %q, want tmp: 0 files", md, res.stdout)
		}
	}
}

// killDeliver runs one delivery, writing its message in paced chunks from
// a goroutine, and sends SIGKILL after r.delay.
func (e *e2e) killDeliver(t *testing.T, r *killRun) {
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	cmd := e.command(ctx, nil, nil, deliverArgs(e.cfg, e2eSender, r.rcpts...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Error(err)
		return
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Error(err)
		return
	}
	kill := time.AfterFunc(r.delay, func() { _ = cmd.Process.Kill() })
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		defer stdin.Close()
		for rest := r.msg; len(rest) > 0; {
			n := min(r.chunk, len(rest))
			if _, err := stdin.Write(rest[:n]); err != nil {
				return // killed: EPIPE, or the pipe closed by Wait
			}
			rest = rest[n:]
			time.Sleep(r.pace)
		}
	}()
	err = cmd.Wait()
	kill.Stop()
	<-wrote
	r.stderr = stderr.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		} else {
			r.code = ws.ExitStatus()
		}
	default:
		t.Errorf("run %s: %v", r.token, err)
		r.code = -1
	}
}

// newSnapshot lists every file in the Maildirs' new/ with inode, size and
// content hash.
func newSnapshot(t *testing.T, maildirs map[string]string) []string {
	var out []string
	for _, md := range maildirs {
		for _, n := range names(t, filepath.Join(md, "new")) {
			p := filepath.Join(md, "new", n)
			sum := sha256.Sum256(readFile(t, p))
			out = append(out, fmt.Sprintf("%s %d %x", p, statT(t, p).Ino, sum[:8]))
		}
	}
	slices.Sort(out)
	return out
}

// ---------------------------------------------------------------------------
// 2. Disk full.

// TestDeliverE2EDiskFull delivers onto a 1 MB tmpfs until a message does
// not fit: that one is deferred (75) and leaves nothing behind, and what
// was delivered before is untouched.
func TestDeliverE2EDiskFull(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", mnt).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("mount tmpfs: %v: %s", err, out)
		if testenv.CI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	e := newE2E(t, e2eOpts{mailRoot: mnt})
	md := e.maildir("alice")

	kept := make(map[string][]byte) // name in new/ -> content
	for i := range 3 {
		msg := testMessage(fmt.Sprintf("small %d", i), strings.Repeat(fmt.Sprintf("line %d of a small message\r\n", i), 300))
		wantCode(t, e.deliver(msg, e2eSender, "alice@example.org"), 0)
		for _, n := range names(t, filepath.Join(md, "new")) {
			if kept[n] == nil {
				kept[n] = readFile(t, filepath.Join(md, "new", n))
			}
		}
	}
	if len(kept) != 3 {
		t.Fatalf("%d files in new/ after 3 deliveries", len(kept))
	}
	checkKept := func() {
		t.Helper()
		got := names(t, filepath.Join(md, "new"))
		if len(got) != len(kept) {
			t.Errorf("new/ holds %q, want only the %d earlier messages", got, len(kept))
		}
		for n, want := range kept {
			data, err := os.ReadFile(filepath.Join(md, "new", n))
			if err != nil || !bytes.Equal(data, want) {
				t.Errorf("earlier message %s changed (err %v)", n, err)
			}
		}
		wantEmpty(t, filepath.Join(md, "tmp"), filepath.Join(md, "cur"))
	}

	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	free := int(sfs.Bavail) * int(sfs.Bsize)
	for _, tc := range []struct {
		name string
		size int
	}{
		{"twice the filesystem", 2 << 20},
		{"just over the free space", free + 8<<10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := testMessage("too big for the disk", strings.Repeat("x", tc.size))
			res := e.deliver(msg, e2eSender, "alice@example.org")
			wantCode(t, res, exTempFail)
			if !strings.Contains(res.stderr, "mail store full") {
				t.Errorf("stderr does not give the reason \"mail store full\":\n%s", res.stderr)
			}
			checkKept()
		})
	}
	// The failed deliveries gave their space back: small mail still works.
	msg := testMessage("after the full disk", "still room for this\r\n")
	wantCode(t, e.deliver(msg, e2eSender, "alice@example.org"), 0)
	if n := len(names(t, filepath.Join(md, "new"))); n != len(kept)+1 {
		t.Errorf("new/ holds %d files, want %d", n, len(kept)+1)
	}
}

// ---------------------------------------------------------------------------
// 3. Missing mount marker.

// TestDeliverE2EMountGuard: with the mount marker (or the whole mail root)
// missing, mail is deferred and nothing is created under the mail root.
func TestDeliverE2EMountGuard(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		opts          e2eOpts
		maildirExists bool // the Maildir existed before the marker vanished
	}{
		{name: "no marker, empty mail root", opts: e2eOpts{noMarker: true}},
		{name: "no marker, Maildir exists", opts: e2eOpts{noMarker: true}, maildirExists: true},
		{name: "no mail root at all", opts: e2eOpts{noMailRoot: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t, tc.opts)
			md := e.maildir("alice")
			if tc.maildirExists {
				for _, sub := range []string{"cur", "new", "tmp"} {
					if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			}
			before := treeSnapshot(t, e.dir)
			res := e.deliver(testMessage("unmounted", "body\r\n"), e2eSender, "alice@example.org")
			wantCode(t, res, exTempFail)
			if after := treeSnapshot(t, e.dir); !slices.Equal(before, after) {
				t.Errorf("the refused delivery changed the tree:\nbefore %q\nafter  %q", before, after)
			}
			if !tc.maildirExists && !tc.opts.noMailRoot {
				if n := names(t, e.root); !slices.Equal(n, []string(nil)) {
					t.Errorf("mail root holds %q, want nothing", n)
				}
			}
			if tc.opts.noMailRoot {
				if _, err := os.Lstat(e.root); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("mail root was created (%v)", err)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 4. Unwritable mail store.

// TestDeliverE2EUnwritable runs deliver as an unprivileged user against
// directories it may not write: a permission problem is the administrator's
// to fix, so the mail is deferred (75), and nothing is left in tmp/ or new/.
func TestDeliverE2EUnwritable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, e *e2e, md string, nobody bool) // makes dirs, owned by the runner
	}{
		{"mail root 0500", func(t *testing.T, e *e2e, md string, nobody bool) {
			chmod(t, e.root, 0o500)
		}},
		{"domain directory 0500", func(t *testing.T, e *e2e, md string, nobody bool) {
			dom := filepath.Dir(filepath.Dir(md))
			mkdirOwned(t, dom, nobody)
			chmod(t, dom, 0o500)
		}},
		{"tmp/ 0500", func(t *testing.T, e *e2e, md string, nobody bool) {
			makeMaildir(t, md, nobody)
			chmod(t, filepath.Join(md, "tmp"), 0o500)
		}},
		{"new/ 0500", func(t *testing.T, e *e2e, md string, nobody bool) {
			makeMaildir(t, md, nobody)
			chmod(t, filepath.Join(md, "new"), 0o500)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t, e2eOpts{})
			prefix := unprivileged(t, e)
			md := e.maildir("alice")
			tc.setup(t, e, md, prefix != nil)
			res := e.runAs(prefix, testMessage("unwritable", "body\r\n"), nil, deliverArgs(e.cfg, e2eSender, "alice@example.org")...)
			wantCode(t, res, exTempFail)
			if !strings.Contains(res.stderr, "permission denied") {
				t.Errorf("stderr does not name the permission problem:\n%s", res.stderr)
			}
			wantEmpty(t, filepath.Join(md, "new"), filepath.Join(md, "tmp"), filepath.Join(md, "cur"))
		})
	}
}

func chmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// mkdirOwned makes dir (and its parents), owned by nobody when asked.
func mkdirOwned(t *testing.T, dir string, nobody bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if nobody {
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
}

// makeMaildir makes md with cur/ new/ tmp/ and its parents below the mail
// root, all owned by nobody when asked.
func makeMaildir(t *testing.T, md string, nobody bool) {
	t.Helper()
	for _, d := range []string{
		filepath.Dir(filepath.Dir(md)), filepath.Dir(md), md,
		filepath.Join(md, "cur"), filepath.Join(md, "new"), filepath.Join(md, "tmp"),
	} {
		mkdirOwned(t, d, nobody)
	}
}

// ---------------------------------------------------------------------------
// 5. Malformed passwd-file line.

// TestDeliverE2EMalformedPasswdLine: a malformed line costs only that line:
// the other users receive, and `nfsdrop check` names the file and line and
// exits 78.
func TestDeliverE2EMalformedPasswdLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		bad  string // "" for a file without problems
	}{
		{"well-formed file", ""},
		{"uid not a number", "mal@example.org:{PLAIN}pw:abc:::::"},
		{"gid not a number", "mal@example.org:{PLAIN}pw:1000:staff::::"},
		{"no password field", "justaname"},
		{"empty user name", ":{PLAIN}pw::::::"},
		{"bad quota rule", "mal@example.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=lots"},
		{"mail location not maildir", "mal@example.org:{PLAIN}pw::::::userdb_mail=mbox:~/mail"},
		{"duplicate user", "alice@example.org:{PLAIN}other::::::"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lines := []string{
				"# nfsdrop e2e users",
				"",
				"alice@example.org:{PLAIN}pw::::::",
			}
			badLine := 0
			if tc.bad != "" {
				lines = append(lines, tc.bad)
				badLine = len(lines)
			}
			lines = append(lines, "bob@example.org:{PLAIN}pw::::::", "carol:{PLAIN}pw::::::")
			e := newE2E(t, e2eOpts{users: lines})

			for _, u := range []string{"alice", "bob", "carol"} {
				msg := testMessage("to "+u, "hello "+u+"\r\n")
				res := e.deliver(msg, e2eSender, u+"@example.org")
				wantCode(t, res, 0)
				name, data := onlyMessage(t, e.maildir(u))
				if err := checkDelivered(filepath.Base(name), data, msg, e2eSender, u+"@example.org"); err != nil {
					t.Error(err)
				}
			}

			res := e.run(nil, nil, "check", "-c", e.cfg)
			if badLine == 0 {
				wantCode(t, res, 0)
				if strings.Contains(res.stderr, "warning:") {
					t.Errorf("check warns about a well-formed file:\n%s", res.stderr)
				}
				return
			}
			wantCode(t, res, exConfig)
			if want := fmt.Sprintf("%s:%d:", e.users, badLine); !strings.Contains(res.stderr+res.stdout, want) {
				t.Errorf("check does not name %q:\n%s", want, res)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 6. Mailbox paths outside the mail root.

// TestDeliverE2EPathEscape: a user whose mailbox path leaves the mail root
// (.., an absolute path elsewhere, a symlink, the root itself) is refused
// with the code for a permanent failure, and nothing is written anywhere.
func TestDeliverE2EPathEscape(t *testing.T) {
	t.Parallel()
	want := exitCode(&failure.Error{Kind: failure.Permanent})
	if want != exUnavailable {
		t.Fatalf("sysexits.go maps failure.Permanent to %d; this test expects EX_UNAVAILABLE (%d)", want, exUnavailable)
	}
	etc := "/etc/nfsdrop-e2e-escape"
	for _, tc := range []struct {
		name  string
		entry func(e *e2e) string        // the passwd-file line for esc@example.org
		setup func(t *testing.T, e *e2e) // optional
		check string                     // a path outside the root that must not appear
	}{
		{name: "home ../../etc", entry: func(e *e2e) string { return "esc@example.org:{PLAIN}pw::::../../etc::" },
			check: "../../etc"},
		{name: "home absolute outside", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::" + filepath.Join(e.dir, "outside") + "::"
		}},
		{name: "userdb_mail absolute /etc", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::::userdb_mail=maildir:" + etc
		}, check: etc},
		{name: "userdb_mail ~/../..", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::example.org/esc::userdb_mail=maildir:~/../../../outside"
		}},
		{name: "dot-dot that cleans to inside", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::example.org/../example.org/esc::"
		}},
		{name: "symlink out of the root", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::example.org/link::"
		}, setup: func(t *testing.T, e *e2e) {
			if err := os.MkdirAll(filepath.Join(e.root, "example.org"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(e.dir, "outside"), filepath.Join(e.root, "example.org", "link")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "the mail root itself", entry: func(e *e2e) string {
			return "esc@example.org:{PLAIN}pw::::" + e.root + "::userdb_mail=maildir:~"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The mail root is nested so that "../../etc" lands inside
			// the test's directory, where the test can look.
			base := t.TempDir()
			e := newE2E(t, e2eOpts{mailRoot: filepath.Join(base, "a", "b", "mail")})
			e.dir = base // where "outside" is, and what must stay unchanged
			e.writeUsers("alice@example.org:{PLAIN}pw::::::", tc.entry(e))
			if err := os.Mkdir(filepath.Join(e.dir, "outside"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, e)
			}
			check := tc.check
			if check != "" && !filepath.IsAbs(check) {
				check = filepath.Join(e.root, check)
			}
			if check != "" {
				if _, err := os.Lstat(check); !errors.Is(err, os.ErrNotExist) {
					t.Skipf("%s exists already (%v)", check, err)
				}
			}
			before := treeSnapshot(t, e.dir)
			res := e.deliver(testMessage("escape", "body\r\n"), e2eSender, "esc@example.org")
			wantCode(t, res, want)
			if !strings.Contains(res.stderr, "outside the mail root") {
				t.Errorf("stderr does not give the reason:\n%s", res.stderr)
			}
			if after := treeSnapshot(t, e.dir); !slices.Equal(before, after) {
				t.Errorf("the refused delivery changed the tree:\nbefore %q\nafter  %q", before, after)
			}
			if check != "" {
				if _, err := os.Lstat(check); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s was created", check)
					os.RemoveAll(check)
				}
			}
			// The file is otherwise fine: alice still receives.
			wantCode(t, e.deliver(testMessage("fine", "body\r\n"), e2eSender, "alice@example.org"), 0)
		})
	}
}

// ---------------------------------------------------------------------------
// 7, 8. Faithful bytes: NUL, bare LF, bare CR, long lines, empty message.

// TestDeliverE2EFaithfulBytes: whatever comes in is stored byte for byte
// after the trace headers; ,S= is the file's size and ,W= its size with
// every bare LF counted as CRLF. An empty message is stored as the trace
// headers alone.
func TestDeliverE2EFaithfulBytes(t *testing.T) {
	t.Parallel()
	big := func(unit string, n int) string { return strings.Repeat(unit, n) }
	for _, tc := range []struct {
		name string
		msg  string
	}{
		{"empty message", ""},
		{"single LF", "\n"},
		{"NUL bytes and bare LF", "Subject: nul\n\nbefore\x00after\nsecond\x00\x00line\n\x00\n"},
		{"NUL in the header", "Subject: a\x00b\nX-Bin: \x00\x01\x02\xff\n\nbody\n"},
		{"mixed line ends", "Subject: mixed\r\n\r\ncrlf\r\nbare lf\nbare cr\rend\n\r\n\n\r\r\n"},
		{"no final line end", "Subject: open\n\nno newline at the end"},
		{"bare CR at the very end", "Subject: cr\n\nends in CR\r"},
		{"only bare LF, 1 MB", "Subject: unix\n\n" + big("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 16<<10)},
		// CRLF pairs everywhere, so some straddle the store's 64 KiB reads.
		{"CRLF and LF across read boundaries", "Subject: dense\r\n\r\n" + big("\r\n\n\r", 300<<10)},
		{"300 KB line without LF", "Subject: long\n\n" + big("L", 300<<10)},
		{"header section longer than the 1 MB scan", big("X-Filler: 0123456789abcdef0123456789abcdef0123456789\n", 25<<10) + "\nbody\n"},
		{"no header section, binary", string(bytes.Repeat([]byte{0, '\n', 0xff, '\r', 0, '\r', '\n'}, 50<<10))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t, e2eOpts{})
			msg := []byte(tc.msg)
			wantCode(t, e.deliver(msg, e2eSender, "alice@example.org"), 0)
			p, data := onlyMessage(t, e.maildir("alice"))
			if err := checkDelivered(filepath.Base(p), data, msg, e2eSender, "alice@example.org"); err != nil {
				t.Fatal(err)
			}
			if len(msg) == 0 {
				if err := checkTrace(data, e2eSender, "alice@example.org"); err != nil {
					t.Errorf("an empty message must be stored as the trace headers only: %v\n%q", err, data)
				}
			}
			wantEmpty(t, filepath.Join(e.maildir("alice"), "tmp"))
		})
	}
}

// ---------------------------------------------------------------------------
// 9. Size limit and a large message.

// TestDeliverE2EMessageSize: a 50 MB message is stored intact under a 60M
// limit and refused (69, nothing left behind) under a 10M one; the limit is
// exact to the byte, also when the header section alone exceeds it.
func TestDeliverE2EMessageSize(t *testing.T) {
	t.Parallel()
	var big []byte
	{
		hdr := testMessage("fifty megabytes", "")
		block := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < len(block); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				block[i+j] = byte(v >> (8 * j))
			}
		}
		big = append(big, hdr...)
		big = append(big, bytes.Repeat(block, 50)...)
		big = big[:50<<20]
		copy(big[len(big)-16:], "-- the last line")
	}
	bigSum := sha256.Sum256(big)

	t.Run("50 MB under 60M", func(t *testing.T) {
		t.Parallel()
		e := newE2E(t, e2eOpts{maxSize: "60M"})
		wantCode(t, e.deliver(big, e2eSender, "alice@example.org"), 0)
		p, data := onlyMessage(t, e.maildir("alice"))
		if err := checkName(filepath.Base(p), data); err != nil {
			t.Error(err)
		}
		if len(data) < len(big) {
			t.Fatalf("stored %d bytes, message is %d", len(data), len(big))
		}
		if sum := sha256.Sum256(data[len(data)-len(big):]); sum != bigSum {
			t.Errorf("sha256 of the stored message %x, want %x", sum, bigSum)
		}
		if err := checkTrace(data[:len(data)-len(big)], e2eSender, "alice@example.org"); err != nil {
			t.Error(err)
		}
		wantEmpty(t, filepath.Join(e.maildir("alice"), "tmp"))
	})

	for _, tc := range []struct {
		name    string
		maxSize string
		msg     []byte
		code    int
	}{
		{"50 MB over 10M", "10M", big, exUnavailable},
		{"exactly the limit", "1K", testMessage("limit", strings.Repeat("b", 1024-len(testMessage("limit", "")))), 0},
		{"one byte over", "1K", testMessage("limit", strings.Repeat("b", 1025-len(testMessage("limit", "")))), exUnavailable},
		{"header section alone over the limit", "1K", []byte(strings.Repeat("X-Long: header line\r\n", 100)), exUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t, e2eOpts{maxSize: tc.maxSize})
			res := e.deliver(tc.msg, e2eSender, "alice@example.org")
			wantCode(t, res, tc.code)
			md := e.maildir("alice")
			if tc.code != 0 {
				if !strings.Contains(res.stderr, "too big") {
					t.Errorf("stderr does not say \"too big\":\n%s", res.stderr)
				}
				wantEmpty(t, filepath.Join(md, "new"), filepath.Join(md, "tmp"))
				return
			}
			p, data := onlyMessage(t, md)
			if err := checkDelivered(filepath.Base(p), data, tc.msg, e2eSender, "alice@example.org"); err != nil {
				t.Error(err)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 10. Exit codes and the envelope.

// TestDeliverE2EStatus covers the exit codes of exitCode (sysexits.go; unknown
// user, loop, quota bounce and defer) and the envelope: -f/-a or $SENDER and
// $RECIPIENT, and the trace headers.
func TestDeliverE2EStatus(t *testing.T) {
	t.Parallel()
	plain := testMessage("status", "hello\r\n")
	kilo := testMessage("2 KB", strings.Repeat("0123456789abcdef\r\n", 120))
	for _, tc := range []struct {
		name  string
		opts  e2eOpts
		users []string
		pre   [][]byte // delivered first, each must exit 0
		msg   []byte
		args  []string // after deliver -c CONFIG; nil: -f sender -a alice
		env   []string
		code  int
		// the one Maildir that must get the message ("" none), with
		// these trace headers
		wantBox, wantSender, wantRcpt string
	}{
		{name: "delivered", msg: plain, code: 0,
			wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
		{name: "address extension", msg: plain, args: []string{"-f", e2eSender, "-a", "alice+lists@example.org"}, code: 0,
			wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice+lists@example.org"},
		{name: "unknown user", msg: plain, args: []string{"-f", e2eSender, "-a", "nobody@example.org"}, code: exNoUser},
		{name: "unknown domain", msg: plain, args: []string{"-f", e2eSender, "-a", "alice@example.com"}, code: exNoUser},
		{name: "loop", msg: append([]byte("Delivered-To: alice@example.org\r\n"), plain...), code: exUnavailable},
		{name: "loop, other case and brackets", msg: append([]byte("DELIVERED-TO:   <Alice@Example.ORG>\r\n"), plain...), code: exUnavailable},
		{name: "Delivered-To someone else is no loop", msg: append([]byte("Delivered-To: bob@example.org\r\n"), plain...), code: 0,
			wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
		{name: "Delivered-To in the body is no loop", msg: testMessage("body", "Delivered-To: alice@example.org\r\n"), code: 0,
			wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
		{name: "over quota", users: []string{"alice@example.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=1K"},
			msg: kilo, code: exNoPerm},
		{name: "over quota, deferred", opts: e2eOpts{quotaAction: "defer"},
			users: []string{"alice@example.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=1K"}, msg: kilo, code: exTempFail},
		{name: "message count quota full", users: []string{"alice@example.org:{PLAIN}pw::::::userdb_quota_rule=*:messages=1"},
			pre: [][]byte{plain}, msg: plain, code: exNoPerm},
		{name: "within quota", users: []string{"alice@example.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=1K"},
			msg: plain, code: 0, wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
		{name: "$RECIPIENT and $SENDER", msg: plain, args: []string{},
			env:  []string{"RECIPIENT=bob@example.org", "SENDER=env-sender@example.net"},
			code: 0, wantBox: "bob", wantSender: "env-sender@example.net", wantRcpt: "bob@example.org"},
		{name: "-a and -f win over the environment", msg: plain,
			env:  []string{"RECIPIENT=bob@example.org", "SENDER=env-sender@example.net"},
			code: 0, wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
		{name: "null sender", msg: plain, args: []string{"-f", "", "-a", "alice@example.org"},
			env:  []string{"SENDER=env-sender@example.net"},
			code: 0, wantBox: "alice", wantSender: "", wantRcpt: "alice@example.org"},
		{name: "no recipient", msg: plain, args: []string{"-f", e2eSender}, code: exTempFail},
		// With several -a the status is the most urgent one (deliver's
		// documented contract; Postfix should use a recipient limit of 1):
		// alice has her copy, the run says 67.
		{name: "unknown and known recipient", msg: plain,
			args: []string{"-f", e2eSender, "-a", "alice@example.org", "-a", "nobody@example.org"}, code: exNoUser,
			wantBox: "alice", wantSender: e2eSender, wantRcpt: "alice@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.users != nil {
				tc.opts.users = append(slices.Clone(defaultUsers[1:]), tc.users...)
			}
			e := newE2E(t, tc.opts)
			for _, m := range tc.pre {
				wantCode(t, e.deliver(m, e2eSender, "alice@example.org"), 0)
			}
			before := make(map[string][]string)
			for _, u := range []string{"alice", "bob", "carol"} {
				before[u] = names(t, filepath.Join(e.maildir(u), "new"))
			}
			args := tc.args
			if args == nil {
				args = []string{"-f", e2eSender, "-a", "alice@example.org"}
			}
			res := e.run(tc.msg, tc.env, append([]string{"deliver", "-c", e.cfg}, args...)...)
			wantCode(t, res, tc.code)
			for _, u := range []string{"alice", "bob", "carol"} {
				md := e.maildir(u)
				wantEmpty(t, filepath.Join(md, "tmp"), filepath.Join(md, "cur"))
				got := names(t, filepath.Join(md, "new"))
				added := len(got) - len(before[u])
				switch {
				case u == tc.wantBox:
					if added != 1 {
						t.Fatalf("%s's new/ got %d files, want 1", u, added)
					}
				case added != 0:
					t.Errorf("%s's new/ got %d files, want none", u, added)
				}
			}
			if tc.wantBox == "" {
				return
			}
			md := e.maildir(tc.wantBox)
			got := names(t, filepath.Join(md, "new"))
			var name string
			for _, n := range got {
				if !slices.Contains(before[tc.wantBox], n) {
					name = n
				}
			}
			data := readFile(t, filepath.Join(md, "new", name))
			if err := checkDelivered(name, data, tc.msg, tc.wantSender, tc.wantRcpt); err != nil {
				t.Error(err)
			}
			// The order as a reader sees it, spelt out.
			lines := strings.SplitN(string(data), "\r\n", 4)
			if lines[0] != "Return-Path: <"+tc.wantSender+">" || lines[1] != "Delivered-To: "+tc.wantRcpt ||
				!strings.HasPrefix(lines[2], "Received: ") {
				t.Errorf("stored file starts %q, want Return-Path, Delivered-To, Received", lines[:3])
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 11. Several recipients.

// TestDeliverE2EMultipleRecipients: one staged file hard-linked into every
// recipient's new/ (same inode, link count 3, no Delivered-To since it
// would differ); recipients with different owners get their own copies.
func TestDeliverE2EMultipleRecipients(t *testing.T) {
	t.Parallel()
	rcpts := []string{"alice@example.org", "bob@example.org", "carol@example.org"}
	msg := testMessage("for three", "one copy, three names\r\n")

	t.Run("hard links", func(t *testing.T) {
		t.Parallel()
		e := newE2E(t, e2eOpts{})
		wantCode(t, e.deliver(msg, e2eSender, rcpts...), 0)
		var first *syscall.Stat_t
		for _, r := range rcpts {
			md := e.maildir(strings.TrimSuffix(r, "@example.org"))
			p, data := onlyMessage(t, md)
			if err := checkDelivered(filepath.Base(p), data, msg, e2eSender, ""); err != nil {
				t.Error(err)
			}
			st := statT(t, p)
			if st.Nlink != 3 {
				t.Errorf("%s: nlink %d, want 3 (one file linked into three new/, tmp/ copy removed)", p, st.Nlink)
			}
			if first == nil {
				first = st
			} else if st.Dev != first.Dev || st.Ino != first.Ino {
				t.Errorf("%s is inode %d, not the shared inode %d", p, st.Ino, first.Ino)
			}
			wantEmpty(t, filepath.Join(md, "tmp"), filepath.Join(md, "cur"))
		}
	})

	t.Run("one broken Maildir answers only for itself", func(t *testing.T) {
		t.Parallel()
		// carol, the first recipient, has a plain file where her Maildir
		// should be: she is refused (69), alice and bob get the message.
		e := newE2E(t, e2eOpts{})
		broken := e.maildir("carol")
		if err := os.MkdirAll(filepath.Dir(broken), 0o711); err != nil {
			t.Fatal(err)
		}
		writeFile(t, broken, []byte("not a directory"))
		r := e.deliver(msg, e2eSender, "carol@example.org", "alice@example.org", "bob@example.org")
		wantCode(t, r, exUnavailable)
		for _, line := range strings.Split(r.stderr, "\n") {
			if strings.Contains(line, `msg="not delivered"`) && !strings.Contains(line, "rcpt=carol@") {
				t.Errorf("only carol should be reported as not delivered: %s", line)
			}
		}
		for _, u := range []string{"alice", "bob"} {
			md := e.maildir(u)
			p, data := onlyMessage(t, md)
			if err := checkDelivered(filepath.Base(p), data, msg, e2eSender, ""); err != nil {
				t.Error(err)
			}
			wantEmpty(t, filepath.Join(md, "tmp"))
		}
		if data, err := os.ReadFile(broken); err != nil || string(data) != "not a directory" {
			t.Errorf("carol's file was touched: %q %v", data, err)
		}
		wantEmpty(t, filepath.Join(e.root, store.SpoolName, "tmp"))
	})

	t.Run("different owners get copies", func(t *testing.T) {
		testenv.RequireRoot(t)
		t.Parallel()
		e := newE2E(t, e2eOpts{users: []string{
			"alice@example.org:{PLAIN}pw:2001:2001::::",
			"bob@example.org:{PLAIN}pw:2002:2002::::",
			"carol@example.org:{PLAIN}pw:2003:2003::::",
		}})
		wantCode(t, e.deliver(msg, e2eSender, rcpts...), 0)
		inodes := make(map[uint64]bool)
		for i, r := range rcpts {
			md := e.maildir(strings.TrimSuffix(r, "@example.org"))
			p, data := onlyMessage(t, md)
			if err := checkDelivered(filepath.Base(p), data, msg, e2eSender, ""); err != nil {
				t.Error(err)
			}
			st := statT(t, p)
			if uid := uint32(2001 + i); st.Uid != uid || st.Gid != uid {
				t.Errorf("%s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, uid)
			}
			if st.Nlink != 1 {
				t.Errorf("%s: nlink %d, want 1", p, st.Nlink)
			}
			inodes[st.Ino] = true
			wantEmpty(t, filepath.Join(md, "tmp"))
		}
		if len(inodes) != 3 {
			t.Errorf("%d distinct inodes, want 3", len(inodes))
		}
	})
}

// ---------------------------------------------------------------------------
// 12. Configuration and usage trouble.

// TestDeliverE2EConfigTroubleDefers: whatever goes wrong before a message
// can be delivered because of the configuration, the environment or the
// command line Postfix was given is temporary (75): Postfix's pipe and
// local bounce on every other non-zero status, and the mail must wait in
// the queue until the administrator fixes the problem. Nothing is stored.
func TestDeliverE2EConfigTroubleDefers(t *testing.T) {
	t.Parallel()
	plain := testMessage("config trouble", "hello\r\n")
	rcpt := []string{"-f", e2eSender, "-a", "alice@example.org"}
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, e *e2e) (prefix []string)
		args   func(e *e2e) []string // the whole command line after the binary
		stderr string                // what stderr must say
	}{
		{name: "TOML syntax error",
			setup: func(t *testing.T, e *e2e) []string {
				writeFile(t, e.cfg, append(readFile(t, e.cfg), "\n[scan\nenabled = true\n"...))
				return nil
			},
			stderr: e2eConfigName},
		{name: "unknown key",
			setup: func(t *testing.T, e *e2e) []string {
				writeFile(t, e.cfg, append([]byte("mail_rot = \"/x\"\n"), readFile(t, e.cfg)...))
				return nil
			},
			stderr: "mail_rot"},
		{name: "missing config file",
			args:   func(e *e2e) []string { return append([]string{"deliver", "-c", e.cfg + ".missing"}, rcpt...) },
			stderr: "no such file"},
		{name: "unknown flag",
			args:   func(e *e2e) []string { return append([]string{"deliver", "-c", e.cfg, "--bogus"}, rcpt...) },
			stderr: "bogus"},
		{name: "flag without its value",
			args:   func(e *e2e) []string { return []string{"deliver", "-c", e.cfg, "-f", e2eSender, "-a"} },
			stderr: "-a"},
		{name: "missing recipient",
			args:   func(e *e2e) []string { return []string{"deliver", "-c", e.cfg, "-f", e2eSender} },
			stderr: "no recipient"},
		{name: "help flag delivers nothing",
			args:   func(e *e2e) []string { return append([]string{"deliver", "-c", e.cfg, "--help"}, rcpt...) },
			stderr: "nothing delivered"},
		{name: "help argument delivers nothing",
			args:   func(e *e2e) []string { return append(append([]string{"deliver", "-c", e.cfg}, rcpt...), "help") },
			stderr: "nothing delivered"},
		{name: "unreadable passwd-file",
			setup: func(t *testing.T, e *e2e) []string {
				prefix := unprivileged(t, e)
				chmod(t, e.users, 0o000)
				return prefix
			},
			stderr: "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newE2E(t, e2eOpts{})
			var prefix []string
			if tc.setup != nil {
				prefix = tc.setup(t, e)
			}
			args := append([]string{"deliver", "-c", e.cfg}, rcpt...)
			if tc.args != nil {
				args = tc.args(e)
			}
			res := e.runAs(prefix, plain, nil, args...)
			wantCode(t, res, exTempFail)
			if !strings.Contains(res.stderr, tc.stderr) {
				t.Errorf("stderr does not say %q:\n%s", tc.stderr, res)
			}
			md := e.maildir("alice")
			for _, d := range []string{"new", "cur", "tmp"} {
				if _, err := os.Stat(filepath.Join(md, d)); err == nil {
					wantEmpty(t, filepath.Join(md, d))
				}
			}
		})
	}
}

// e2eConfigName is the configuration file's base name, which a config
// error names.
const e2eConfigName = "nfsdrop.toml"

// unprivileged prepares e to run the binary as nobody when the tests run
// as root (root ignores permission bits), and returns the command prefix
// (nil when not root).
func unprivileged(t *testing.T, e *e2e) []string {
	t.Helper()
	const nobody = 65534
	if os.Geteuid() != 0 {
		return nil
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		msg := "running as root and setpriv (util-linux) is missing: cannot run deliver as an unprivileged user"
		if testenv.CI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	makeTraversable(t, e.dir)
	bin := filepath.Join(e.dir, "bin", "nfsdrop")
	if err := os.Mkdir(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	// A hard link, not a copy (see TestDeliverE2EUnwritable).
	if err := os.Link(e.bin, bin); err != nil {
		writeFile(t, bin, readFile(t, e.bin))
	}
	chmod(t, bin, 0o755)
	e.bin = bin
	if err := os.Chown(e.root, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return []string{setpriv, "--reuid=" + strconv.Itoa(nobody), "--regid=" + strconv.Itoa(nobody), "--clear-groups"}
}
