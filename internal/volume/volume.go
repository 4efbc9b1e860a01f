// Package volume answers one question: which volume (NFS filer mounted
// below the mail root) and which store.Store serve a user's mailbox.
//
// A mailbox the user database names a volume for (userdb.User.Volume) is
// on that volume. Any other mailbox, at MAILROOT/rel, is placed: the
// volumes are ordered by rendezvous (highest random weight) hashing of
// (volume name, rel), which every machine computes the same way, and the
// first volume in that order where <volume path>/<rel> exists holds it; if
// none has it, the first volume in the order that takes new mailboxes gets
// it. So adding a volume moves no existing mailbox (it is found where it
// is), and moves only about 1/N of the new ones' first choice.
//
// With one volume there is no choice and Locate makes no file system call
// at all: a single filer behaves exactly as before volumes existed.
package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// DefaultName is the name of the one volume when none is configured.
const DefaultName = "default"

// Options configures a Set.
type Options struct {
	// MailRoot is store.mail_root: unnamed mailboxes are given as
	// MAILROOT/rel by the user database.
	MailRoot string
	// Volumes lists the volumes; at least one.
	Volumes []VolumeOptions
}

// VolumeOptions configures one volume.
type VolumeOptions struct {
	Name string
	// Path is where the volume is mounted (the MailRoot of its store).
	Path string
	// MountMarker is the marker file under Path ("" = no check).
	MountMarker string
	// NewMailboxes: placed mailboxes that exist nowhere yet may be
	// created here.
	NewMailboxes bool
	// FS is the volume's file system; nil means store.OSFS{}. The hung
	// filer gate's FS goes here.
	FS store.FS
	// Err reports the volume's health: non-nil means down (temporary).
	// nil means always up.
	Err func() error
	// StoreOptions is the template of the volume's store: hostname,
	// quota, retries, logger, observer... MailRoot, MountMarker and FS
	// are set from the fields above.
	StoreOptions store.Options
}

// Volume is one volume and the store over it.
type Volume struct {
	Name         string
	Path         string
	NewMailboxes bool
	Store        *store.Store
	fs           store.FS
	health       func() error
}

// Err is nil when the volume is up, else a temporary *failure.Error naming
// the volume (never its path), fast: it makes no file system call.
func (v *Volume) Err() error {
	if v.health == nil {
		return nil
	}
	err := v.health()
	if err == nil {
		return nil
	}
	var fe *failure.Error
	if errors.As(err, &fe) && !fe.Temporary() {
		return err
	}
	return &failure.Error{Kind: failure.Temporary, Op: "volume " + v.Name, Reason: "mail storage unavailable", Err: err}
}

// Set is the configured volumes.
type Set struct {
	root   string
	vols   []*Volume
	byName map[string]*Volume
}

// Open makes the store of each volume.
func Open(o Options) (*Set, error) {
	if len(o.Volumes) == 0 {
		return nil, errors.New("volume: no volumes")
	}
	s := &Set{root: filepath.Clean(o.MailRoot), byName: make(map[string]*Volume)}
	takesNew := false
	for _, vo := range o.Volumes {
		if _, dup := s.byName[vo.Name]; dup || vo.Name == "" {
			return nil, fmt.Errorf("volume: name %q empty or used twice", vo.Name)
		}
		fsys := vo.FS
		if fsys == nil {
			fsys = store.OSFS{}
		}
		so := vo.StoreOptions
		so.MailRoot, so.MountMarker, so.FS = vo.Path, vo.MountMarker, fsys
		st, err := store.New(so)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", vo.Name, err)
		}
		v := &Volume{Name: vo.Name, Path: filepath.Clean(vo.Path), NewMailboxes: vo.NewMailboxes, Store: st, fs: fsys, health: vo.Err}
		s.vols = append(s.vols, v)
		s.byName[v.Name] = v
		takesNew = takesNew || v.NewMailboxes
	}
	if !takesNew && len(s.vols) > 1 {
		return nil, errors.New("volume: no volume takes new mailboxes")
	}
	return s, nil
}

// Single is a Set of one volume over st, named "default": the store of a
// configuration without volumes.
func Single(st *store.Store) *Set {
	v := &Volume{Name: DefaultName, Path: st.Root(), NewMailboxes: true, Store: st}
	return &Set{root: st.Root(), vols: []*Volume{v}, byName: map[string]*Volume{v.Name: v}}
}

// Volumes lists the volumes in configuration order.
func (s *Set) Volumes() []*Volume { return s.vols }

// ByName returns the volume called name, or nil.
func (s *Set) ByName(name string) *Volume { return s.byName[name] }

// Holding returns the volume whose path holds path, or the first volume
// (a path on no volume, such as a quarantine Maildir of a configuration
// without volumes).
func (s *Set) Holding(path string) *Volume {
	clean := filepath.Clean(path)
	for _, v := range s.vols {
		if clean == v.Path || strings.HasPrefix(clean, v.Path+string(filepath.Separator)) {
			return v
		}
	}
	return s.vols[0]
}

// MailRoot is the mail root the user database's unnamed paths are under.
func (s *Set) MailRoot() string { return s.root }

// Locate returns the volume holding u's mailbox and the mailbox on it. A
// volume that is down (or the volume that may hold a placed mailbox) is a
// temporary *failure.Error naming the volume; so is a volume name the
// configuration does not know.
func (s *Set) Locate(ctx context.Context, u *userdb.User) (*Volume, store.Mailbox, error) {
	mb := mailboxOf(u)
	switch {
	case len(s.vols) == 1 && (u.Volume == "" || u.Volume == s.vols[0].Name):
		// One volume: nothing to choose, nothing to look at.
		v := s.vols[0]
		if u.Volume == "" && v.Path != s.root {
			rel, err := s.rel(u.Mailbox)
			if err != nil {
				return nil, mb, err
			}
			mb.Path = filepath.Join(v.Path, rel)
		}
		return v, mb, v.Err()
	case u.Volume != "":
		v := s.byName[u.Volume]
		if v == nil {
			return nil, mb, failure.Temp("volume "+u.Volume, "mailbox on a volume that is not configured", nil)
		}
		return v, mb, v.Err()
	}
	rel, err := s.rel(u.Mailbox)
	if err != nil {
		return nil, mb, err
	}
	v, err := s.place(ctx, rel)
	if err != nil {
		return nil, mb, err
	}
	mb.Path = filepath.Join(v.Path, rel)
	return v, mb, nil
}

// Relocate is mb, a mailbox on v, on the volume named to: the same path
// relative to the volume (a moved Maildir, store.MovedError).
func (s *Set) Relocate(v *Volume, mb store.Mailbox, to string) (*Volume, store.Mailbox, error) {
	nv := s.byName[to]
	if nv == nil {
		return nil, mb, failure.Temp("volume "+to, "mailbox moved to a volume that is not configured", nil)
	}
	rel, err := filepath.Rel(v.Path, mb.Path)
	if err != nil || !filepath.IsLocal(rel) {
		return nil, mb, failure.Temp("volume "+v.Name, "mailbox not on its volume", err)
	}
	mb.Path = filepath.Join(nv.Path, rel)
	return nv, mb, nv.Err()
}

// Order is the placement order of a mailbox at MAILROOT/rel: every volume,
// by descending rendezvous weight of (name, rel).
func (s *Set) Order(rel string) []*Volume {
	type weighted struct {
		v *Volume
		w uint64
	}
	ws := make([]weighted, len(s.vols))
	for i, v := range s.vols {
		ws[i] = weighted{v, weight(v.Name, rel)}
	}
	slices.SortFunc(ws, func(a, b weighted) int {
		switch {
		case a.w > b.w:
			return -1
		case a.w < b.w:
			return 1
		}
		return strings.Compare(a.v.Name, b.v.Name)
	})
	out := make([]*Volume, len(ws))
	for i, w := range ws {
		out[i] = w.v
	}
	return out
}

// weight is the rendezvous weight of a volume for a mailbox: FNV-1a of
// the two strings (with a separator no name contains), finished with
// splitmix64's mixer so that nearby inputs give unrelated weights. It
// must never change: it is where mailboxes live.
func weight(name, rel string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(rel))
	x := binary.BigEndian.Uint64(h.Sum(nil))
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// rel is the path of an unnamed mailbox relative to the mail root.
func (s *Set) rel(mailbox string) (string, error) {
	rel, err := filepath.Rel(s.root, filepath.Clean(mailbox))
	if err != nil || !filepath.IsLocal(rel) {
		// userdb confines every mailbox to the mail root: this is a
		// configuration mismatch (a reload in between), not the user's.
		return "", failure.Temp("locate mailbox", "mailbox path not below the mail root", err)
	}
	return rel, nil
}

// place walks the placement order of rel: the first volume where the
// mailbox exists holds it; a volume that is down, or whose answer is
// anything but "not there" (with its mount marker present), stops the
// walk with a temporary failure, because it may hold the mailbox and
// creating a second one elsewhere would split the user's mail.
func (s *Set) place(ctx context.Context, rel string) (*Volume, error) {
	order := s.Order(rel)
	for _, v := range order {
		if err := ctx.Err(); err != nil {
			return nil, failure.Temp("locate mailbox", "cancelled", err)
		}
		if err := v.Err(); err != nil {
			return nil, err
		}
		_, err := v.fs.Lstat(filepath.Join(v.Path, rel))
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return nil, failure.Temp("volume "+v.Name, "mail storage unavailable", err)
		}
		// Not there: believe it only if the volume is mounted (an empty
		// mount point has no mailboxes either).
		if err := v.Store.CheckMount(); err != nil {
			return nil, &failure.Error{Kind: failure.Temporary, Op: "volume " + v.Name, Reason: "mail store not mounted", Err: err}
		}
	}
	for _, v := range order {
		if v.NewMailboxes {
			return v, nil
		}
	}
	return nil, failure.Temp("locate mailbox", "no volume takes new mailboxes", nil)
}

// mailboxOf maps a user record to the store's view of its Maildir.
func mailboxOf(u *userdb.User) store.Mailbox {
	return store.Mailbox{
		Path:  u.Mailbox,
		UID:   u.UID,
		GID:   u.GID,
		Quota: store.Quota{Bytes: u.Quota.Bytes, Messages: u.Quota.Messages},
	}
}
