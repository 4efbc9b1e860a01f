package userdb

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// mailboxRule is where users' Maildirs are and what confines them: every
// source (passwd-file, LDAP) builds its Users with it, so a mailbox path
// means the same, and is refused for the same reasons, whatever the source.
type mailboxRule struct {
	root        string // absolute and clean
	maildirName string // below a home directory; "" = the home itself
	defDomain   string // normalised default domain, for bare user names
	// volumes are the configured volumes below root; none means root is
	// the one volume, and mailbox paths keep their meaning of old.
	volumes []VolumeRoot
}

// VolumeRoot is a configured volume as the user database sees it: a name
// a mailbox path may start with ("NAME:rel/path") and the mount point
// that an absolute mailbox path lies under.
type VolumeRoot struct {
	Name string
	Path string // absolute, clean, strictly under the mail root
	// Err, when not nil, reports whether the volume is usable now; a
	// non-nil error (a down or hung filer) is a temporary failure of the
	// lookup, before any file system call that could hang on it.
	Err func() error
	// Guard, when not nil, runs the lookup's file system calls on the
	// volume (resolving the mailbox path's symlinks) as one call through
	// the volume's hung-filer gate (fsgate.Gate.DoLookup: given up when the filer does not answer in time); an error from it is
	// a temporary failure.
	Guard func(call func() error) error
}

// Reasons the peer sees for a mailbox on no usable volume: temporary, as
// the mail must wait for the administrator to fix the entry or the
// configuration.
const (
	reasonUnknownVolume = "mailbox on a volume that is not configured"
	reasonNoVolume      = "mailbox path not on a configured volume"
)

// newMailboxRule checks the mail root, the Maildir name and the Normalizer
// (whose default domain names the homes of bare user names).
func newMailboxRule(op, mailRoot, maildirName string, norm Normalizer, volumes []VolumeRoot) (mailboxRule, error) {
	if mailRoot == "" || !filepath.IsAbs(mailRoot) {
		return mailboxRule{}, failure.Perm(op, "mail root must be an absolute path", nil)
	}
	for _, v := range volumes {
		if v.Name == "" || !filepath.IsAbs(v.Path) || !strictlyUnder(filepath.Clean(mailRoot), filepath.Clean(v.Path)) {
			return mailboxRule{}, failure.Perm(op, fmt.Sprintf("volume %q: path must be absolute and below the mail root", v.Name), nil)
		}
	}
	md := maildirName
	if md != "" {
		if filepath.IsAbs(md) || hasDotDot(md) {
			return mailboxRule{}, failure.Perm(op, "maildir name must be a relative path without '..'", nil)
		}
		if md = filepath.Clean(md); md == "." {
			md = ""
		}
	}
	if err := norm.Validate(); err != nil {
		return mailboxRule{}, err
	}
	r := mailboxRule{root: filepath.Clean(mailRoot), maildirName: md}
	for _, v := range volumes {
		v.Path = filepath.Clean(v.Path)
		r.volumes = append(r.volumes, v)
	}
	if norm.DefaultDomain != "" {
		r.defDomain, _ = normalizeDomain(norm.DefaultDomain) // validated above
	}
	return r, nil
}

// account is what a source knows of a user: enough to build its User.
type account struct {
	name     string // normalised user name: local@domain, or a bare local part
	domain   string // "" for a bare name
	uid, gid int    // -1 when unset
	home     string // as the source gives it; "" = MAILROOT/DOMAIN/LOCAL
	mail     string // the Maildir as the source gives it; "" = home/maildirName
	quota    Quota
}

// mailboxRefusal is why a mailbox was refused, for the log of the source
// that asked, which knows where the account came from. The peer only sees
// the failure; the path is never in it.
type mailboxRefusal struct {
	path    string
	outside bool   // outside the mail root (Permanent), else not checkable (Temporary)
	volume  string // on no usable volume (Temporary): the volume's name, "-" for none
	why     string // outside: why; else the step that failed
	cause   error  // the error of that step
	failure error  // the *failure.Error for the caller
}

// user builds the User of a for addr, resolving and confining its
// mailbox. A refusal is logged on log, as source ("passwd-file", "ldap")
// with where (attributes naming the entry) before the user and the path.
func (r mailboxRule) user(op string, a *account, addr Address, log *slog.Logger, source string, where ...any) (*User, error) {
	mp := r.mailboxPath(a)
	ref := r.place(op, &mp)
	if ref == nil {
		ref = r.confine(op, mp)
	}
	if ref != nil {
		attrs := append(append([]any(nil), where...), "user", a.name, "path", ref.path)
		switch {
		case ref.outside:
			log.Error(source+": "+reasonOutsideRoot, append(attrs, "why", ref.why)...)
		case ref.volume != "":
			log.Error(source+": "+ref.why, append(attrs, "volume", ref.volume)...)
		default:
			log.Error(source+": cannot check mailbox path", append(attrs, "step", ref.why, "error", ref.cause)...)
		}
		return nil, ref.failure
	}
	vol := ""
	if mp.vol != nil {
		vol = mp.vol.Name
	}
	return &User{
		Name:    a.name,
		Address: addr.String(),
		Mailbox: filepath.Clean(mp.path),
		Volume:  vol,
		UID:     a.uid,
		GID:     a.gid,
		Quota:   a.quota,
		Enabled: true,
	}, nil
}

// mailboxPath is a's Maildir as the entry gives it, not yet cleaned or
// checked.
type mailboxPath struct {
	path string
	// dotdot reports whether a path taken from the entry had a ".."
	// element: such a path is refused even when it would clean to
	// somewhere inside the root, because it says the writer was trying
	// something.
	dotdot bool
	// absolute: the entry gave an absolute path (which names the volume
	// it lies on); named: it gave "NAME:rel" (unknown is set when NAME is
	// not a configured volume). Neither: the path is relative to the mail
	// root and the mailbox is placed on a volume by internal/volume.
	absolute bool
	named    *VolumeRoot
	unknown  string
	// vol is the volume the mailbox is on when the entry names one; set
	// by place.
	vol *VolumeRoot
}

// mailboxPath computes a's Maildir.
func (r mailboxRule) mailboxPath(a *account) mailboxPath {
	var mp mailboxPath
	home := a.home
	if vol, rest, unknown, ok := r.splitVolume(home); ok {
		mp.named, mp.unknown, mp.dotdot = vol, unknown, hasDotDot(rest)
		home = filepath.Join(r.volumePath(vol), rest)
	} else {
		switch {
		case home == "":
			// A bare entry's mailbox must not depend on the domain the mail
			// happened to be addressed to, so it uses the default domain.
			dom := a.domain
			if dom == "" {
				dom = r.defDomain
			}
			local := a.name
			if i := strings.LastIndexByte(local, '@'); i >= 0 {
				local = local[:i]
			}
			home = filepath.Join(r.root, dom, local)
		case filepath.IsAbs(home):
			mp.dotdot, mp.absolute = hasDotDot(home), true
		default:
			mp.dotdot = hasDotDot(home)
			home = filepath.Join(r.root, home)
		}
	}
	if a.mail == "" {
		mp.path = filepath.Join(home, r.maildirName)
		return mp
	}
	mp.dotdot = mp.dotdot || hasDotDot(a.mail)
	if vol, rest, unknown, ok := r.splitVolume(a.mail); ok {
		mp.named, mp.unknown, mp.absolute = vol, unknown, false
		mp.path = filepath.Join(r.volumePath(vol), rest)
		return mp
	}
	switch {
	case a.mail == "~":
		mp.path = home
	case strings.HasPrefix(a.mail, "~/"):
		mp.path = filepath.Join(home, a.mail[2:])
	case filepath.IsAbs(a.mail):
		mp.path, mp.named, mp.unknown, mp.absolute = a.mail, nil, "", true
	default:
		mp.path, mp.named, mp.unknown, mp.absolute = filepath.Join(r.root, a.mail), nil, "", false
	}
	return mp
}

// splitVolume splits "NAME:rel/path" when volumes are configured and NAME
// has the form of a volume name. vol is nil and unknown is NAME when no
// volume has that name. Without configured volumes a ':' means nothing, as
// before volumes existed.
func (r mailboxRule) splitVolume(p string) (vol *VolumeRoot, rest, unknown string, ok bool) {
	if len(r.volumes) == 0 {
		return nil, "", "", false
	}
	name, rest, found := strings.Cut(p, ":")
	if !found || !volumeNameForm(name) {
		return nil, "", "", false
	}
	for i := range r.volumes {
		if r.volumes[i].Name == name {
			return &r.volumes[i], rest, "", true
		}
	}
	return nil, rest, name, true
}

// volumePath is where a named volume's paths start; the mail root for an
// unknown volume (the mailbox is refused later, but its path is logged).
func (r mailboxRule) volumePath(v *VolumeRoot) string {
	if v == nil {
		return r.root
	}
	return v.Path
}

// volumeNameForm reports whether s has the form of a volume name
// (internal/config checks the configured names against the same form).
func volumeNameForm(s string) bool {
	if s == "" || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// place finds the volume an entry names: "NAME:rel" names NAME, an
// absolute path the volume it lies under. An unknown name, or (with
// volumes configured) an absolute path below the mail root on no volume,
// is a temporary failure: the entry or the configuration is wrong, and the
// mail waits for the administrator.
func (r mailboxRule) place(op string, mp *mailboxPath) *mailboxRefusal {
	if len(r.volumes) == 0 {
		return nil
	}
	switch {
	case mp.unknown != "":
		return &mailboxRefusal{path: mp.path, volume: mp.unknown, why: "not a configured volume",
			failure: failure.Temp(op, reasonUnknownVolume, nil)}
	case mp.named != nil:
		mp.vol = mp.named
	case mp.absolute:
		clean := filepath.Clean(mp.path)
		for i := range r.volumes {
			// The volume's own path is on it, and refused by confine,
			// as the mail root itself is.
			if clean == r.volumes[i].Path || strictlyUnder(r.volumes[i].Path, clean) {
				mp.vol = &r.volumes[i]
			}
		}
		if mp.vol == nil && strictlyUnder(r.root, clean) && !mp.dotdot {
			return &mailboxRefusal{path: mp.path, volume: "-", why: "mailbox path not on a configured volume",
				failure: failure.Temp(op, reasonNoVolume, nil)}
		}
	}
	if mp.vol != nil && mp.vol.Err != nil {
		if err := mp.vol.Err(); err != nil {
			return &mailboxRefusal{path: mp.path, volume: mp.vol.Name, why: "volume unavailable",
				failure: failure.Temp(op, "mail storage unavailable", err)}
		}
	}
	return nil
}

// hasDotDot reports whether path has a ".." element.
func hasDotDot(path string) bool {
	for el := range strings.SplitSeq(path, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

// confine refuses a mailbox that is not strictly inside its root (the
// volume the entry names, else the mail root), lexically or after
// resolving symlinks: a path on one volume must not lead into another. It
// runs on every lookup, not at load, because symlinks on the storage can
// change at any time. The peer only ever sees reasonOutsideRoot; the path
// goes to the log. This is the early, permanent answer for a
// misconfigured entry; it cannot stop a link swapped in after the lookup,
// which is why the store resolves the path again at use and follows only
// root-owned in-root links (store/confine.go).
//
// A mailbox that is placed on one of several volumes is only checked
// lexically here: which volume holds it is decided later
// (internal/volume), and the store confines it to that volume at use.
func (r mailboxRule) confine(op string, mp mailboxPath) *mailboxRefusal {
	mbox, root := mp.path, r.root
	if mp.vol != nil {
		root = mp.vol.Path
	}
	outside := func(why string) *mailboxRefusal {
		return &mailboxRefusal{path: mbox, outside: true, why: why, failure: failure.Perm(op, reasonOutsideRoot, nil)}
	}
	if mp.dotdot {
		return outside("path has a '..' element")
	}
	clean := filepath.Clean(mbox)
	if !filepath.IsAbs(clean) || !strictlyUnder(r.root, clean) {
		return outside("path is not below the mail root")
	}
	if !strictlyUnder(root, clean) {
		return outside("path is not below its volume")
	}
	if len(r.volumes) > 0 && mp.vol == nil {
		return nil
	}

	// Symlinks: resolve the deepest part of the path that exists (the
	// Maildir itself may not have been created yet) and check the result
	// against the resolved root. Failing to resolve is a storage problem
	// (NFS not mounted, a link into a mount that is missing), so Postfix
	// should retry, not bounce.
	unavailable := func(what string, err error) *mailboxRefusal {
		return &mailboxRefusal{path: mbox, why: what, cause: err, failure: failure.Temp(op, "mail storage unavailable", err)}
	}
	// These calls go to the filer: on a volume they run as one call
	// through its hung-filer gate (Guard), so that a hung filer holds at
	// most its gate's bound of threads here too, and a down volume
	// answers at once.
	links := func() *mailboxRefusal {
		realRoot, err := resolvePath(root)
		if err != nil {
			return unavailable("resolve mail root", err)
		}
		existing := clean
		var real string
		for {
			var rerr error
			if real, rerr = resolvePath(existing); rerr == nil {
				break
			}
			// Resolving failed: is it the name that is missing (walk
			// up), or something it leads to (a dangling or looping link)?
			_, err := os.Lstat(existing)
			if err == nil {
				return unavailable("resolve symlinks", rerr)
			}
			// ENOTDIR: some ancestor is a file; keep walking up to find it.
			if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
				return unavailable("stat mailbox path", err)
			}
			if existing == root || existing == filepath.Dir(existing) {
				return unavailable("stat mail root", err)
			}
			existing = filepath.Dir(existing)
		}
		if existing == clean {
			// The Maildir itself exists: it must resolve strictly below
			// the root (a link to the root itself would hand out every
			// mailbox).
			if !strictlyUnder(realRoot, real) {
				return outside("symlink leads outside the mail root")
			}
		} else if real != realRoot && !strictlyUnder(realRoot, real) {
			return outside("symlink leads outside the mail root")
		}
		return nil
	}
	if mp.vol != nil && mp.vol.Guard != nil {
		var ref *mailboxRefusal
		if err := mp.vol.Guard(func() error { ref = links(); return nil }); err != nil {
			return unavailable("volume busy or down", err)
		}
		return ref
	}
	return links()
}

// strictlyUnder reports whether the clean absolute path p lies below root
// (and is not root itself).
func strictlyUnder(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// resolvePath is filepath.EvalSymlinks done by the kernel: open path with
// O_PATH (following every symlink on the way, the last one too) and read
// back the name of what was opened from /proc/self/fd. Three syscalls on
// every lookup, where EvalSymlinks makes one lstat per path component
// (twelve for the root and a Maildir five levels below it). Without /proc
// it falls back to EvalSymlinks.
func resolvePath(path string) (string, error) {
	fd, err := openPath(path)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || !filepath.IsAbs(real) {
		return filepath.EvalSymlinks(path)
	}
	return real, nil
}

// openPath opens path O_PATH, retrying a signal-interrupted open.
func openPath(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}
