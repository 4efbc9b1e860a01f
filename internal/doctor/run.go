package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nfsdrop/nfsdrop/store"
)

// DefaultFsyncSamples is how many delivery-like cycles the fsync check
// times.
const DefaultFsyncSamples = 50

// Options is what Run checks and how.
type Options struct {
	// MailRoot and MountMarker are store.mail_root and store.mount_marker.
	MailRoot    string
	MountMarker string
	// Hostname is the host name nfsdrop uses (configured or the system's),
	// HostnameSource says which, and HostPart is store.HostPart of it.
	Hostname       string
	HostnameSource string
	HostPart       string
	// MountInfo is the mount table to read; "" means /proc/self/mountinfo.
	MountInfo string
	// FsyncSamples is how many cycles the fsync check times; 0 means 50.
	FsyncSamples int
	// MachineIDFiles and BootIDFile identify this machine for the host
	// claim; nil and "" mean the system's.
	MachineIDFiles []string
	BootIDFile     string
	// FS is the filesystem the probes use; nil means the real one.
	FS store.FS
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// PID names the scratch directory; 0 means os.Getpid().
	PID int
}

func (o *Options) defaults() {
	if o.MountInfo == "" {
		o.MountInfo = DefaultMountInfo
	}
	if o.FsyncSamples == 0 {
		o.FsyncSamples = DefaultFsyncSamples
	}
	if o.MachineIDFiles == nil {
		o.MachineIDFiles = DefaultMachineIDFiles
	}
	if o.BootIDFile == "" {
		o.BootIDFile = DefaultBootIDFile
	}
	if o.FS == nil {
		o.FS = store.OSFS{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
	if o.HostPart == "" {
		o.HostPart = store.HostPart(o.Hostname)
	}
}

// Run checks the mail root and returns the report. It writes only in a
// scratch directory under the mail root (.nfsdrop-doctor-<host part>-<pid>,
// removed before it returns) and the host claim
// (.nfsdrop-hosts/<host part>), and writes nothing when the mount marker is
// missing (the mail root may then be the empty local mount point).
func Run(o Options) *Report {
	o.defaults()
	root := filepath.Clean(o.MailRoot)
	r := &Report{MailRoot: root, HostPart: o.HostPart}

	// 1. The filesystem and its mount options.
	real := RealPath(root)
	nfs := false
	if mounts, err := ReadMountInfo(o.MountInfo); err != nil {
		r.add(warn("filesystem", "cannot read the mount table: "+errText(err), "run on Linux with /proc mounted"))
	} else {
		m, found := FindMount(mounts, real)
		nfs = found && m.IsNFS()
		r.add(CheckFilesystem(m, found, real)...)
	}

	// 2. The mount marker.
	marker := CheckMarker(root, o.MountMarker, nfs)
	r.add(marker)

	// The scratch directory for the probes (and the root squash test).
	fi, statErr := os.Stat(root)
	var scratch, why string
	skipped := false
	switch {
	case statErr != nil:
		why = "not run: the mail root is unusable (" + errText(statErr) + ")"
	case marker.Status == FAIL:
		why = "not run: the mount marker is missing, so " + root + " may be the empty mount point rather than the store"
		skipped = true
	default:
		scratch = filepath.Join(root, ScratchName(o.HostPart, o.PID))
		if err := o.FS.Mkdir(scratch, 0o700); err != nil {
			why = "cannot create a scratch directory in " + root + ": " + errText(err)
			scratch = ""
		} else {
			defer os.RemoveAll(scratch)
		}
	}
	squashed := -1
	if scratch != "" {
		// Root squashed (a root-made file owned by someone else), or an
		// NFSv4 owner name the client could not map (whoever made it).
		if info, err := o.FS.Lstat(scratch); err == nil && (info.UID == UnmappedOwner || os.Geteuid() == 0 && info.UID != 0) {
			squashed = info.UID
		}
	}

	// 3. Ownership and mode.
	r.add(CheckPermissions(root, fi, statErr, squashed))

	// 4. Free space and inodes.
	if statErr == nil {
		if sp, err := StatSpace(root); err != nil {
			r.add(fail("free-space", errText(err), "check the mount"))
		} else {
			r.add(CheckSpace(sp))
		}
	} else {
		r.add(fail("free-space", "not measured: the mail root is unusable", "mount the export on "+root))
	}

	// 5–7. The probes.
	if scratch != "" {
		r.add(CheckLinkRename(o.FS, scratch))
		r.add(CheckSymlinkLock(o.FS, scratch))
		r.add(CheckFsync(o.FS, scratch, o.FsyncSamples))
		r.add(CheckClock(o.FS, scratch, o.Now, nfs))
	} else {
		writeFix := "the mail root must be mounted read-write and writable by nfsdrop's user"
		if skipped {
			r.add(warn("link-rename", why, "fix the mount marker first"))
			r.add(warn("symlink-lock", why, "fix the mount marker first"))
			r.add(warn("fsync", why, "fix the mount marker first"))
		} else {
			r.add(fail("link-rename", why, writeFix))
			r.add(fail("symlink-lock", why, writeFix))
			r.add(fail("fsync", why, writeFix))
		}
		r.add(warn("clock", "not measured: "+strings.TrimPrefix(why, "not run: "), writeFix))
	}

	// 8. The host part: generic names, and another machine using it.
	r.add(CheckHostname(o.Hostname, o.HostPart, o.HostnameSource))
	switch id, err := ReadMachineID(o.MachineIDFiles, o.BootIDFile, o.Hostname); {
	case err != nil:
		r.add(warn("host-claim", "cannot identify this machine: "+err.Error(), "create /etc/machine-id (systemd-machine-id-setup)"))
	case statErr != nil || skipped:
		r.add(warn("host-claim", "not checked: "+strings.TrimPrefix(why, "not run: "), "fix the rows above first"))
	default:
		r.add(CheckHostClaim(o.FS, root, o.HostPart, o.Hostname, id, o.Now()))
	}
	return r
}
