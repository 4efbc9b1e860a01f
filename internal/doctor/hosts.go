package doctor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

// HostsDir is the directory under the mail root where each machine claims
// its host part: one file per host part, holding the machine's id.
const HostsDir = ".nfsdrop-hosts"

// genericHosts are host names that many machines have.
var genericHosts = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "localhost4": true, "localhost6": true,
	"localhost4.localdomain4": true, "localhost6.localdomain6": true, "ip6-localhost": true,
	"(none)": true, "localdomain": true, "debian": true, "ubuntu": true, "fedora": true,
	"centos": true, "archlinux": true, "alpine": true, "raspberrypi": true, "linux": true,
}

// containerID matches the 12 hex digits Docker and Podman use as a
// container's host name.
var containerID = regexp.MustCompile(`^[0-9a-f]{12}$`)

// CheckHostname judges the host part this machine puts in Maildir names.
// source says where the host name came from (for the detail).
func CheckHostname(hostname, hostPart, source string) Result {
	const name = "hostname"
	detail := fmt.Sprintf("host part %q", hostPart)
	if hostPart != hostname {
		detail += fmt.Sprintf(" (from %q, encoded/shortened)", hostname)
	}
	if source != "" {
		detail += ", from " + source
	}
	fix := "set hostname = \"<a name unique to this machine>\" in nfsdrop.toml"
	lower := strings.ToLower(hostname)
	switch {
	case hostPart == "" || hostPart == "." || hostPart == "..":
		return fail(name, detail+": not usable as a host part", fix)
	case genericHosts[lower] || strings.HasPrefix(lower, "localhost."):
		return warn(name, detail+": a generic name that other machines are likely to have too, which would make their Maildir names collide with this one's", fix)
	case containerID.MatchString(lower):
		return warn(name, detail+": looks like a container's random host name: it changes with every new container, and containers made from one image often share /etc/machine-id, so the host-claim check cannot tell them apart", fix)
	}
	return ok(name, detail)
}

// MachineID identifies this machine for the host claim.
type MachineID struct {
	ID     string
	Source string // the file it was read from, or "hostname+boot_id"
	// Fallback is true when no machine-id file was found and the id is
	// made of the host name and the boot id (which changes at each boot).
	Fallback bool
}

// Default machine id sources.
var (
	DefaultMachineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}
	DefaultBootIDFile     = "/proc/sys/kernel/random/boot_id"
)

// ReadMachineID reads the first usable machine-id file, or falls back to
// hostname + boot id.
func ReadMachineID(files []string, bootIDFile, hostname string) (MachineID, error) {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		id := strings.TrimSpace(string(b))
		if id != "" && id != "uninitialized" {
			return MachineID{ID: id, Source: f}, nil
		}
	}
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return MachineID{}, fmt.Errorf("no machine id (%s) and no boot id: %w", strings.Join(files, ", "), err)
	}
	return MachineID{ID: "boot:" + hostname + ":" + strings.TrimSpace(string(b)), Source: "hostname+boot_id", Fallback: true}, nil
}

func (m MachineID) short() string {
	if m.Fallback || len(m.ID) <= 12 {
		return m.ID
	}
	return m.ID[:12] + "…"
}

// claim is the content of a host claim file.
type claim struct {
	MachineID string
	Hostname  string
	Checked   string
}

func (c claim) fallback() bool { return strings.HasPrefix(c.MachineID, "boot:") }

func (c claim) encode() []byte {
	return fmt.Appendf(nil, "machine-id %s\nhostname %s\nchecked %s\n", c.MachineID, c.Hostname, c.Checked)
}

func parseClaim(b []byte) claim {
	var c claim
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		switch k {
		case "machine-id":
			c.MachineID = strings.TrimSpace(v)
		case "hostname":
			c.Hostname = strings.TrimSpace(v)
		case "checked":
			c.Checked = strings.TrimSpace(v)
		}
	}
	return c
}

// fileName makes a host part usable as one file name ("." and ".." are
// not; '/' cannot occur, store.HostPart encodes it).
func fileName(hostPart string) string {
	if strings.Trim(hostPart, ".") == "" {
		return strings.ReplaceAll(hostPart, ".", `\056`) + "_"
	}
	return hostPart
}

// CheckHostClaim makes sure no other machine writes Maildir names with
// this host part. Each machine that runs the doctor records its machine id
// in <root>/.nfsdrop-hosts/<host part>; the file is created with link(), so
// of two machines claiming at once only one wins. A claim by another
// machine id is a FAIL. When either id is only a fallback (host name + boot
// id, which changes at each boot) a mismatch may be this machine before a
// reboot: WARN, and the claim is taken over.
func CheckHostClaim(fsys store.FS, root, hostPart, hostname string, id MachineID, now time.Time) Result {
	const name = "host-claim"
	dir := filepath.Join(root, HostsDir)
	path := filepath.Join(dir, fileName(hostPart))
	writeFix := "make " + dir + " writable for this check (it records which machine uses which host part)"
	cannot := "; cannot tell whether another machine uses host part " + strconv.Quote(hostPart)

	// compare judges an existing claim; done is false when it is ours.
	compare := func(theirs claim) (res Result, done bool) {
		if theirs.MachineID == id.ID {
			return Result{}, false
		}
		by := "machine id " + theirs.MachineID
		if theirs.Hostname != "" {
			by += ", host name " + theirs.Hostname
		}
		if theirs.Checked != "" {
			by += ", last checked " + theirs.Checked
		}
		if theirs.fallback() || id.Fallback {
			// A reboot or another machine: cannot tell. Take the claim
			// over, so that the next run compares with this boot.
			return warn(name, fmt.Sprintf("host part %q was claimed by %s; this machine is %s. An id made without /etc/machine-id changes at each boot, "+
				"so this may be this machine before a reboot, or another machine with the same host part", hostPart, by, id.ID),
				"create /etc/machine-id (systemd-machine-id-setup) so that machines can be told apart, and make sure no other machine has this host name"), false
		}
		return fail(name, fmt.Sprintf("two machines share the host part %q: Maildir names could collide (%s is claimed by %s; this machine is %s)", hostPart, path, by, id.short()),
			"set hostname in nfsdrop.toml to a name unique to each machine; if this machine replaced the other one, remove "+path+" and run nfsdrop doctor again"), true
	}

	var pending Result // a WARN from compare, reported once the claim is taken over
	theirs, rerr := readClaim(fsys, path)
	switch {
	case rerr == nil:
		if res, done := compare(theirs); done {
			return res
		} else if res.Check != "" {
			pending = res
		}
	case !errors.Is(rerr, fs.ErrNotExist):
		return warn(name, "cannot read "+path+": "+errText(rerr)+cannot, writeFix)
	}

	if err := fsys.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return warn(name, "cannot create "+dir+": "+errText(err)+cannot, writeFix)
	}
	mine := claim{MachineID: id.ID, Hostname: hostname, Checked: now.UTC().Format(time.RFC3339)}
	tmp := filepath.Join(dir, ".tmp."+fileName(hostPart)+"."+strconv.Itoa(os.Getpid()))
	fsys.Remove(tmp) // a leftover of a run killed midway
	defer fsys.Remove(tmp)
	if _, err := createFile(fsys, tmp, mine.encode()); err != nil {
		return warn(name, "cannot write in "+dir+": "+errText(err)+cannot, writeFix)
	}
	if rerr == nil {
		// Ours (or taken over): refresh it.
		if err := fsys.Rename(tmp, path); err != nil {
			return warn(name, "cannot refresh "+path+": "+errText(err), writeFix)
		}
		if pending.Check != "" {
			return pending
		}
		return ok(name, fmt.Sprintf("host part %q is claimed by this machine (machine id %s from %s)%s", hostPart, id.short(), id.Source, others(fsys, dir, hostPart)))
	}
	// First claim: link() makes the name or fails with EEXIST, so of two
	// machines claiming at once only one wins.
	err := fsys.Link(tmp, path)
	if linkUnsupported(err) {
		if _, serr := fsys.Lstat(path); errors.Is(serr, fs.ErrNotExist) {
			err = fsys.Rename(tmp, path)
		} else {
			err = syscall.EEXIST
		}
	}
	if errors.Is(err, syscall.EEXIST) {
		theirs, rerr := readClaim(fsys, path)
		if rerr != nil {
			return warn(name, "cannot read "+path+": "+errText(rerr)+cannot, writeFix)
		}
		if res, done := compare(theirs); done || res.Check != "" {
			return res
		}
		err = nil
	}
	if err != nil {
		return warn(name, "cannot record the claim "+path+": "+errText(err)+cannot, writeFix)
	}
	return ok(name, fmt.Sprintf("claimed host part %q for this machine (machine id %s from %s) in %s%s", hostPart, id.short(), id.Source, path, others(fsys, dir, hostPart)))
}

func readClaim(fsys store.FS, path string) (claim, error) {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return claim{}, err
	}
	defer f.Close()
	var b bytes.Buffer
	buf := make([]byte, 4096)
	for b.Len() < 64<<10 {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return parseClaim(b.Bytes()), nil
}

// others lists the host parts other machines have claimed.
func others(fsys store.FS, dir, hostPart string) string {
	names, err := fsys.ReadDirNames(dir)
	if err != nil {
		return ""
	}
	var hosts []string
	for _, n := range names {
		if !strings.HasPrefix(n, ".tmp.") && n != fileName(hostPart) {
			hosts = append(hosts, n)
		}
	}
	if len(hosts) == 0 {
		return "; no other machine has claimed a host part yet"
	}
	sort.Strings(hosts)
	if len(hosts) > 10 {
		return fmt.Sprintf("; %d other host parts claimed: %s, ...", len(hosts), strings.Join(hosts[:10], ", "))
	}
	return fmt.Sprintf("; %d other host parts claimed: %s", len(hosts), strings.Join(hosts, ", "))
}
