package store

import (
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Entry is one message of a session's listing.
type Entry struct {
	// Dir is "new" or "cur"; Name the file name in it.
	Dir, Name string
	// Size is the RFC 1939 size: octets with CRLF line ends.
	Size int64
	// StoredSize is the file's size (for quota), from ,S= or the file.
	StoredSize int64
	// UIDL is stable across sessions and machines.
	UIDL string
	// order sorts by delivery time: seconds, then microseconds, then name.
	sec, usec int64
}

func (s *Store) listing(mb Mailbox, format string, filerNow time.Time) ([]Entry, string, error) {
	newStamp, err := s.stampOf(mb.at("new"), filerNow)
	if err != nil {
		return nil, "", s.classify("list new", err)
	}
	curStamp, err := s.stampOf(mb.at("cur"), filerNow)
	if err != nil {
		return nil, "", s.classify("list cur", err)
	}
	cached := s.index.get(mb.Path)
	how := "miss"
	// The legacy UIDLs are loaded only when names must be listed: a
	// listing in the cache was made with the same frozen record.
	var legacy *legacyUIDLs
	frozen := true
	loadLegacy := func() error {
		if cached != nil && cached.format == format {
			// The record never changes once written: no need to read
			// it again on this machine.
			legacy = cached.legacy
			return nil
		}
		var err error
		legacy, frozen, err = s.frozenLegacyUIDLs(mb, format)
		return err
	}
	var newEntries, curEntries []Entry
	switch {
	case cached != nil && cached.format == format && cached.cur.same(curStamp) && cached.new.same(newStamp):
		s.obs.IndexLookup("hit")
		s.stats.add(func(c *CacheStats) { c.Hits++ })
		return cached.all, "hit", nil
	case cached != nil && cached.format == format && cached.cur.same(curStamp):
		how = "partial"
		s.stats.add(func(c *CacheStats) { c.Invalidations++ })
		curEntries = cached.curEntries
		if err := loadLegacy(); err != nil {
			return nil, "", err
		}
		if newEntries, err = s.listDir(mb, "new", legacy, cached.newEntries); err != nil {
			return nil, "", err
		}
	default:
		if cached != nil {
			s.stats.add(func(c *CacheStats) { c.Invalidations++ })
		}
		if err := loadLegacy(); err != nil {
			return nil, "", err
		}
		if newEntries, err = s.listDir(mb, "new", legacy, nil); err != nil {
			return nil, "", err
		}
		if curEntries, err = s.listDir(mb, "cur", legacy, nil); err != nil {
			return nil, "", err
		}
	}
	s.obs.IndexLookup(how)
	s.stats.add(func(c *CacheStats) {
		if how == "partial" {
			c.PartialHits++
		} else {
			c.Misses++
		}
	})
	all := make([]Entry, 0, len(newEntries)+len(curEntries))
	all = append(all, curEntries...)
	all = append(all, newEntries...)
	sort.Slice(all, func(i, j int) bool {
		a, b := &all[i], &all[j]
		if a.sec != b.sec {
			return a.sec < b.sec
		}
		if a.usec != b.usec {
			return a.usec < b.usec
		}
		return a.UIDL < b.UIDL
	})
	if !frozen {
		// Made from a legacy list that did not parse whole: the next
		// session must read it again, not reuse these UIDLs.
		s.index.drop(mb.Path)
		return all, how, nil
	}
	s.index.put(mb.Path, &cachedListing{format: format, legacy: legacy, new: newStamp, cur: curStamp, newEntries: newEntries, curEntries: curEntries, all: all})
	return all, how, nil
}

// listDir lists one of new/ or cur/. prev (the cached entries of the same
// directory) is reused for names still present, so sizes that had to be
// computed from a file are not computed again.
func (s *Store) listDir(mb Mailbox, sub string, legacy *legacyUIDLs, prev []Entry) ([]Entry, error) {
	dir := mb.at(sub)
	var names []string
	err := s.retryStale(func() error { var e error; names, e = s.fs.ReadDirNames(dir); return e })
	if err != nil {
		return nil, s.classify("list "+sub, err)
	}
	known := make(map[string]*Entry, len(prev))
	for i := range prev {
		known[prev[i].Name] = &prev[i]
	}
	out := make([]Entry, 0, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if e, ok := known[name]; ok {
			out = append(out, *e)
			continue
		}
		e := Entry{Dir: sub, Name: name}
		base := BaseName(name)
		e.UIDL = uidlOf(name)
		if legacy != nil {
			if u, ok := legacy.uidl[base]; ok {
				e.UIDL = u
			}
		}
		size, sizeOK, crlf, crlfOK := SizesFromName(name)
		if !crlfOK && legacy != nil {
			crlf, crlfOK = legacy.size[base]
		}
		if !sizeOK || !crlfOK {
			st, w, err := s.measure(filepath.Join(dir, name))
			if err != nil {
				if isErrno(err, syscall.ENOENT) {
					continue // removed while we listed
				}
				return nil, s.classify("measure message", err)
			}
			if !sizeOK {
				size = st
			}
			if !crlfOK {
				crlf = w
			}
		}
		e.StoredSize, e.Size = size, crlf
		e.sec, e.usec = deliveryTime(base)
		out = append(out, e)
	}
	return out, nil
}

// measure reads a message to find its size and its CRLF size (for files
// whose names do not carry ,S= and ,W=: mail written by other programs).
func (s *Store) measure(path string) (size, crlf int64, err error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var c crlfCounter
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	for {
		n, err := f.Read(*bp)
		c.add((*bp)[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return c.size, c.pop3Size(), nil
}

// deliveryTime parses "<sec>.M<usec>..." (or "<sec>.<anything>") from a
// base name; names without a leading number sort first.
func deliveryTime(base string) (sec, usec int64) {
	dot := strings.IndexByte(base, '.')
	if dot <= 0 {
		return 0, 0
	}
	sec, err := strconv.ParseInt(base[:dot], 10, 64)
	if err != nil {
		return 0, 0
	}
	rest := base[dot+1:]
	if strings.HasPrefix(rest, "M") {
		end := 1
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		usec, _ = strconv.ParseInt(rest[1:end], 10, 64)
	}
	return sec, usec
}
