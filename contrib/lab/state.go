package lab

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// StateDir holds one file per running lab, naming its owner, processes and
// namespaces, so that CleanStale can remove what a killed run left.
const StateDir = "/run/nfsdrop-lab"

type stateProc struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // start time in clock ticks (/proc/PID/stat field 22)
}

type stateData struct {
	ID         string      `json:"id"`
	Dir        string      `json:"dir"`
	Owner      stateProc   `json:"owner"`
	Namespaces []string    `json:"namespaces"`
	Procs      []stateProc `json:"procs"`
}

type state struct {
	mu   sync.Mutex
	path string
	d    stateData
}

func newState(id, dir string) (*state, error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, err
	}
	s := &state{path: filepath.Join(StateDir, id+".json")}
	s.d.ID, s.d.Dir = id, dir
	s.d.Owner = stateProc{Name: "owner", PID: os.Getpid(), Start: procStart(os.Getpid())}
	return s, s.save()
}

func (s *state) save() error {
	b, _ := json.MarshalIndent(&s.d, "", "  ")
	return writeFileAtomic(s.path, b, 0o644)
}

func (s *state) addPID(name string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.Procs = append(s.d.Procs, stateProc{Name: name, PID: pid, Start: procStart(pid)})
	s.save()
}

func (s *state) addNS(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.Namespaces = append(s.d.Namespaces, ns)
	s.save()
}

func (s *state) remove() { os.Remove(s.path) }

// procStart returns the start time of a process in clock ticks since boot,
// or 0 when it does not exist. A PID with another start time is another
// process (the PID was reused).
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	// The command name (field 2) may hold spaces: fields count after ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0 // gone, or a zombie waiting to be reaped
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

func (p stateProc) alive() bool {
	return p.PID > 0 && p.Start != 0 && procStart(p.PID) == p.Start
}

// CleanStale removes what lab runs whose owner process is gone left
// behind: their processes (by PID, only when the start time still
// matches) and their namespaces (by name). Labs still running are left
// alone.
func CleanStale(logf func(string, ...any)) {
	files, _ := filepath.Glob(filepath.Join(StateDir, "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var d stateData
		if json.Unmarshal(b, &d) != nil || d.Owner.alive() {
			continue
		}
		for _, p := range d.Procs {
			if p.alive() {
				logf("stale lab %s: killing %s (pid %d)", d.ID, p.Name, p.PID)
				syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
		for _, ns := range d.Namespaces {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
				logf("stale lab %s: deleting namespace %s", d.ID, ns)
				exec.Command("ip", "netns", "del", ns).Run()
			}
		}
		os.Remove(f)
	}
}
