package userdb

import (
	"crypto/hmac"
	"crypto/sha256"
	"sync"
	"time"
)

// ldapCache holds recent lookups by normalised address. A nil *ldapCache is
// a cache that is off: get finds nothing and put keeps nothing.
type ldapCache struct {
	size                  int
	ttl, negTTL, maxStale time.Duration

	mu sync.RWMutex
	m  map[string]ldapCacheEntry
}

type ldapCacheEntry struct {
	e  *ldapEntry // nil: no such user
	at time.Time  // when the directory said so
}

// get returns the entry for key, whether it is still fresh (within its
// TTL), and whether there is one at all.
func (c *ldapCache) get(key string, now time.Time) (ce ldapCacheEntry, fresh, ok bool) {
	if c == nil {
		return ce, false, false
	}
	c.mu.RLock()
	ce, ok = c.m[key]
	c.mu.RUnlock()
	if !ok {
		return ce, false, false
	}
	ttl := c.ttl
	if ce.e == nil {
		ttl = c.negTTL
	}
	return ce, now.Sub(ce.at) < ttl, true
}

// usableStale reports whether an expired entry may still stand in for the
// directory while it is unavailable.
func (c *ldapCache) usableStale(ce ldapCacheEntry, now time.Time) bool {
	if c == nil {
		return false
	}
	ttl := c.ttl
	if ce.e == nil {
		ttl = c.negTTL
	}
	return now.Sub(ce.at) < ttl+c.maxStale
}

// put records what the directory said about key. When the cache is full,
// entries that can no longer be used are dropped first, then arbitrary ones
// down to seven eighths of the size, so that the sweep is rare.
func (c *ldapCache) put(key string, e *ldapEntry, now time.Time) {
	if c == nil || (e == nil && c.negTTL == 0) {
		return
	}
	ce := ldapCacheEntry{e: e, at: now}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[key]; !exists && len(c.m) >= c.size {
		for k, old := range c.m {
			if !c.usableStale(old, now) {
				delete(c.m, k)
			}
		}
		target := c.size - max(1, c.size/8)
		for k := range c.m {
			if len(c.m) <= target {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[key] = ce
}

// ldapAuthCache remembers successful logins for a short time, keyed by the
// normalised login name, with an HMAC of the password under a key made at
// start: the password itself is never kept, and the hash is useless outside
// this process. Entries are never used past their TTL, whatever the state
// of the directory. A nil *ldapAuthCache is off.
type ldapAuthCache struct {
	key  []byte
	ttl  time.Duration
	size int

	mu sync.Mutex
	m  map[string]ldapAuthEntry
}

type ldapAuthEntry struct {
	mac   [sha256.Size]byte
	local string
	e     *ldapEntry
	at    time.Time
}

func (c *ldapAuthCache) mac(name, password string) (sum [sha256.Size]byte) {
	h := hmac.New(sha256.New, c.key)
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(password))
	copy(sum[:], h.Sum(nil))
	return sum
}

func (c *ldapAuthCache) get(name, password string, now time.Time) (*ldapEntry, string, bool) {
	if c == nil {
		return nil, "", false
	}
	c.mu.Lock()
	ae, ok := c.m[name]
	if ok && now.Sub(ae.at) >= c.ttl {
		delete(c.m, name)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil, "", false
	}
	mac := c.mac(name, password)
	if !hmac.Equal(mac[:], ae.mac[:]) {
		return nil, "", false
	}
	return ae.e, ae.local, true
}

func (c *ldapAuthCache) put(name, password, local string, e *ldapEntry, now time.Time) {
	if c == nil {
		return
	}
	ae := ldapAuthEntry{mac: c.mac(name, password), local: local, e: e, at: now}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[name]; !exists && len(c.m) >= c.size {
		for k, old := range c.m {
			if now.Sub(old.at) >= c.ttl || len(c.m) >= c.size {
				delete(c.m, k)
			}
		}
	}
	c.m[name] = ae
}
