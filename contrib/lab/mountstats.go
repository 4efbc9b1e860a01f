package lab

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// OpStat is one line of the per-op statistics of /proc/self/mountstats.
type OpStat struct {
	Ops, Trans, Timeouts   int64
	BytesSent, BytesRecv   int64
	QueueMs, RTTMs, ExecMs int64
}

// MountStats is what /proc/self/mountstats says about one NFS mount.
type MountStats struct {
	Device, MountPoint string
	// Ops holds the per-op statistics by procedure name (GETATTR, ...).
	Ops map[string]OpStat
	// Events are the client's VFS and cache events (inoderevalidate,
	// dentryrevalidate, datainvalidate, attrinvalidate, vfsopen, ...).
	Events map[string]int64
	// XprtReconnects counts new TCP connections to the server (xprt line).
	XprtConnects int64
}

var eventNames = []string{
	"inoderevalidate", "dentryrevalidate", "datainvalidate", "attrinvalidate",
	"vfsopen", "vfslookup", "vfsaccess", "vfsupdatepage", "vfsreadpage",
	"vfsreadpages", "vfswritepage", "vfswritepages", "vfsgetdents",
	"vfssetattr", "vfsflush", "vfsfsync", "vfslock", "vfsrelease",
	"congestionwait", "setattrtrunc", "extendwrite", "sillyrename",
	"shortread", "shortwrite", "delay", "pnfsread", "pnfswrite",
}

// ParseMountStats extracts the NFS mount at mountPoint from the text of
// /proc/self/mountstats.
func ParseMountStats(text, mountPoint string) (*MountStats, error) {
	var ms *MountStats
	perOp := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "device ") {
			if ms != nil {
				break
			}
			f := strings.Fields(line)
			if len(f) >= 5 && f[4] == mountPoint && strings.Contains(line, "fstype nfs") {
				ms = &MountStats{Device: f[1], MountPoint: f[4], Ops: map[string]OpStat{}, Events: map[string]int64{}}
			}
			continue
		}
		if ms == nil {
			continue
		}
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "events:"):
			for i, v := range strings.Fields(t)[1:] {
				if i < len(eventNames) {
					ms.Events[eventNames[i]], _ = strconv.ParseInt(v, 10, 64)
				}
			}
		case strings.HasPrefix(t, "xprt:"):
			// xprt: tcp srcport bind_count connect_count connect_time idle_time ...
			f := strings.Fields(t)
			if len(f) > 4 {
				ms.XprtConnects, _ = strconv.ParseInt(f[4], 10, 64)
			}
		case t == "per-op statistics":
			perOp = true
		case perOp:
			name, rest, ok := strings.Cut(t, ":")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			n := make([]int64, 8)
			for i := 0; i < len(f) && i < 8; i++ {
				n[i], _ = strconv.ParseInt(f[i], 10, 64)
			}
			ms.Ops[name] = OpStat{n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]}
		}
	}
	if ms == nil {
		return nil, fmt.Errorf("lab: no NFS mount on %s in mountstats", mountPoint)
	}
	return ms, nil
}

// Sub returns the counters of m minus those of before.
func (m *MountStats) Sub(before *MountStats) *MountStats {
	d := &MountStats{Device: m.Device, MountPoint: m.MountPoint, Ops: map[string]OpStat{}, Events: map[string]int64{}}
	for k, o := range m.Ops {
		b := before.Ops[k]
		d.Ops[k] = OpStat{o.Ops - b.Ops, o.Trans - b.Trans, o.Timeouts - b.Timeouts,
			o.BytesSent - b.BytesSent, o.BytesRecv - b.BytesRecv,
			o.QueueMs - b.QueueMs, o.RTTMs - b.RTTMs, o.ExecMs - b.ExecMs}
	}
	for k, v := range m.Events {
		d.Events[k] = v - before.Events[k]
	}
	d.XprtConnects = m.XprtConnects - before.XprtConnects
	return d
}

// TotalOps is the number of NFS calls.
func (m *MountStats) TotalOps() int64 {
	var n int64
	for _, o := range m.Ops {
		n += o.Ops
	}
	return n
}

// Retransmissions counts transmissions beyond the first of each call.
func (m *MountStats) Retransmissions() int64 {
	var n int64
	for _, o := range m.Ops {
		n += o.Trans - o.Ops
	}
	return n
}

// PerUnit formats the non-zero op counts divided by units (deliveries,
// files), largest first: "GETATTR 4.02, LOOKUP 3.00, ...".
func (m *MountStats) PerUnit(units int64) string {
	if units <= 0 {
		return "(none)"
	}
	type kv struct {
		k string
		v int64
	}
	var ops []kv
	for k, o := range m.Ops {
		if o.Ops > 0 {
			ops = append(ops, kv{k, o.Ops})
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].v != ops[j].v {
			return ops[i].v > ops[j].v
		}
		return ops[i].k < ops[j].k
	})
	var b strings.Builder
	for i, o := range ops {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.2f", o.k, float64(o.v)/float64(units))
	}
	fmt.Fprintf(&b, " (total %.2f", float64(m.TotalOps())/float64(units))
	if r := m.Retransmissions(); r > 0 {
		fmt.Fprintf(&b, ", %d retransmissions", r)
	}
	b.WriteString(")")
	return b.String()
}

// keyOps are the procedures a Maildir delivery uses, shown even when zero.
var keyOps = []string{"LOOKUP", "GETATTR", "ACCESS", "CREATE", "SETATTR", "WRITE", "COMMIT", "LINK", "REMOVE", "RENAME", "MKDIR", "READDIRPLUS", "READ"}

// Summary formats the op counts with their share per unit (file,
// delivery): "LOOKUP 22 (0.19) GETATTR 120 (1.03) ...", then the total
// and the time spent waiting for the server per unit, against elapsed
// seconds for all units.
func (m *MountStats) Summary(units int64, elapsed float64) string {
	if units <= 0 {
		return "(no units)"
	}
	var b strings.Builder
	shown := map[string]bool{}
	add := func(k string) {
		o := m.Ops[k]
		shown[k] = true
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s %d (%.2f)", k, o.Ops, float64(o.Ops)/float64(units))
	}
	for _, k := range keyOps {
		add(k)
	}
	var rest []string
	for k, o := range m.Ops {
		if !shown[k] && o.Ops > 0 {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		add(k)
	}
	var exec int64
	for _, o := range m.Ops {
		exec += o.ExecMs
	}
	fmt.Fprintf(&b, "\n    = %.2f calls per unit; %.1f ms waiting on NFS per unit", float64(m.TotalOps())/float64(units), float64(exec)/float64(units))
	if elapsed > 0 {
		fmt.Fprintf(&b, " of %.1f ms", elapsed*1000/float64(units))
	}
	if r := m.Retransmissions(); r > 0 {
		fmt.Fprintf(&b, "; %d retransmissions", r)
	}
	return b.String()
}

// Add returns the sum of m and o (counters of several VMs).
func (m *MountStats) Add(o *MountStats) *MountStats {
	s := &MountStats{Device: m.Device, MountPoint: m.MountPoint, Ops: map[string]OpStat{}, Events: map[string]int64{}}
	for _, x := range []*MountStats{m, o} {
		if x == nil {
			continue
		}
		for k, v := range x.Ops {
			a := s.Ops[k]
			s.Ops[k] = OpStat{a.Ops + v.Ops, a.Trans + v.Trans, a.Timeouts + v.Timeouts, a.BytesSent + v.BytesSent,
				a.BytesRecv + v.BytesRecv, a.QueueMs + v.QueueMs, a.RTTMs + v.RTTMs, a.ExecMs + v.ExecMs}
		}
		for k, v := range x.Events {
			s.Events[k] += v
		}
		s.XprtConnects += x.XprtConnects
	}
	return s
}

// mutatingOps are the procedures (NFSv3 and NFSv4 names alike) that
// change the file system, which a filer must put on stable storage before
// it answers: what limits a filer first. NFSv4 has no CREATE of regular
// files (OPEN creates them, and mountstats does not tell an OPEN that
// creates from one that does not): OPEN is counted apart (OpenOps).
var mutatingOps = []string{"CREATE", "SETATTR", "WRITE", "LINK", "REMOVE", "RENAME", "MKDIR", "RMDIR", "SYMLINK", "MKNOD", "COMMIT"}

// MutatingOps is the number of calls of mutatingOps.
func (m *MountStats) MutatingOps() int64 {
	var n int64
	for _, k := range mutatingOps {
		n += m.Ops[k].Ops
	}
	return n
}

// OpenOps is the number of NFSv4 OPEN calls (OPEN and OPEN_NOATTR); 0 on
// NFSv3, which has no OPEN.
func (m *MountStats) OpenOps() int64 { return m.Ops["OPEN"].Ops + m.Ops["OPEN_NOATTR"].Ops }

// CallsPer formats "total / mutating" per unit, with NFSv4 OPENs apart:
// "7.1 / 5.0" on v3, "14.2 / 4.0 + 1.0 OPEN" on v4.x.
func (m *MountStats) CallsPer(units int64) string {
	if m == nil || units <= 0 {
		return "–"
	}
	u := float64(units)
	s := fmt.Sprintf("%.1f / %.1f", float64(m.TotalOps())/u, float64(m.MutatingOps())/u)
	if o := m.OpenOps(); o > 0 {
		s += fmt.Sprintf(" + %.1f OPEN", float64(o)/u)
	}
	return s
}
