package userdb

import (
	"errors"
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
}

// newMailboxRule checks the mail root, the Maildir name and the Normalizer
// (whose default domain names the homes of bare user names).
func newMailboxRule(op, mailRoot, maildirName string, norm Normalizer) (mailboxRule, error) {
	if mailRoot == "" || !filepath.IsAbs(mailRoot) {
		return mailboxRule{}, failure.Perm(op, "mail root must be an absolute path", nil)
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
	why     string // outside: why; else the step that failed
	cause   error  // the error of that step
	failure error  // the *failure.Error for the caller
}

// user builds the User of a for addr, resolving and confining its
// mailbox. A refusal is logged on log, as source ("passwd-file", "ldap")
// with where (attributes naming the entry) before the user and the path.
func (r mailboxRule) user(op string, a *account, addr Address, log *slog.Logger, source string, where ...any) (*User, error) {
	mbox, dotdot := r.mailboxPath(a)
	if ref := r.confine(op, mbox, dotdot); ref != nil {
		attrs := append(append([]any(nil), where...), "user", a.name, "path", ref.path)
		if ref.outside {
			log.Error(source+": "+reasonOutsideRoot, append(attrs, "why", ref.why)...)
		} else {
			log.Error(source+": cannot check mailbox path", append(attrs, "step", ref.why, "error", ref.cause)...)
		}
		return nil, ref.failure
	}
	return &User{
		Name:    a.name,
		Address: addr.String(),
		Mailbox: filepath.Clean(mbox),
		UID:     a.uid,
		GID:     a.gid,
		Quota:   a.quota,
		Enabled: true,
	}, nil
}

// mailboxPath computes a's Maildir (not yet cleaned or checked). dotdot
// reports whether a path taken from the file had a ".." element: such a
// path is refused even when it would clean to somewhere inside the root,
// because it says the writer was trying something.
func (r mailboxRule) mailboxPath(a *account) (path string, dotdot bool) {
	home := a.home
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
		dotdot = hasDotDot(home)
	default:
		dotdot = hasDotDot(home)
		home = filepath.Join(r.root, home)
	}
	if a.mail == "" {
		return filepath.Join(home, r.maildirName), dotdot
	}
	dotdot = dotdot || hasDotDot(a.mail)
	switch {
	case a.mail == "~":
		return home, dotdot
	case strings.HasPrefix(a.mail, "~/"):
		return filepath.Join(home, a.mail[2:]), dotdot
	case filepath.IsAbs(a.mail):
		return a.mail, dotdot
	default:
		return filepath.Join(r.root, a.mail), dotdot
	}
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

// confine refuses a mailbox that is not strictly inside the mail root,
// lexically or after resolving symlinks. It runs on every lookup, not at
// load, because symlinks on the storage can change at any time. The peer
// only ever sees reasonOutsideRoot; the path goes to the log. This is the
// early, permanent answer for a misconfigured entry; it cannot stop a link
// swapped in after the lookup, which is why the store resolves the path
// again at use and follows only root-owned in-root links (store/confine.go).
func (r mailboxRule) confine(op string, mbox string, dotdot bool) *mailboxRefusal {
	outside := func(why string) *mailboxRefusal {
		return &mailboxRefusal{path: mbox, outside: true, why: why, failure: failure.Perm(op, reasonOutsideRoot, nil)}
	}
	if dotdot {
		return outside("path has a '..' element")
	}
	clean := filepath.Clean(mbox)
	if !filepath.IsAbs(clean) || !strictlyUnder(r.root, clean) {
		return outside("path is not below the mail root")
	}

	// Symlinks: resolve the deepest part of the path that exists (the
	// Maildir itself may not have been created yet) and check the result
	// against the resolved root. Failing to resolve is a storage problem
	// (NFS not mounted, a link into a mount that is missing), so Postfix
	// should retry, not bounce.
	unavailable := func(what string, err error) *mailboxRefusal {
		return &mailboxRefusal{path: mbox, why: what, cause: err, failure: failure.Temp(op, "mail storage unavailable", err)}
	}
	realRoot, err := resolvePath(r.root)
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
		// Resolving failed: is it the name that is missing (walk up),
		// or something it leads to (a dangling or looping link)?
		_, err := os.Lstat(existing)
		if err == nil {
			return unavailable("resolve symlinks", rerr)
		}
		// ENOTDIR: some ancestor is a file; keep walking up to find it.
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return unavailable("stat mailbox path", err)
		}
		if existing == r.root || existing == filepath.Dir(existing) {
			return unavailable("stat mail root", err)
		}
		existing = filepath.Dir(existing)
	}
	if existing == clean {
		// The Maildir itself exists: it must resolve strictly below the
		// root (a link to the root itself would hand out every mailbox).
		if !strictlyUnder(realRoot, real) {
			return outside("symlink leads outside the mail root")
		}
	} else if real != realRoot && !strictlyUnder(realRoot, real) {
		return outside("symlink leads outside the mail root")
	}
	return nil
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
