package lab

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// TracedStack is one kernel stack of a traced event and how often it was
// seen, per unit of the phase.
type TracedStack struct {
	Event string
	Comm  string
	Stack []string
	Count int
	Per   float64
}

const tracefs = "/sys/kernel/tracing"

// traceStart mounts tracefs in vm (if needed), empties the trace buffer and
// enables events (system:name) with a kernel stack trigger on each.
func (s *ScaleOutLab) traceStart(ctx context.Context, vm *VM, events []string) error {
	if len(events) == 0 {
		return nil
	}
	cmd := []string{
		"[ -e " + tracefs + "/trace ] || mount -t tracefs nodev " + tracefs,
		"echo 16384 > " + tracefs + "/buffer_size_kb",
		"echo 0 > " + tracefs + "/tracing_on",
		"echo > " + tracefs + "/trace",
	}
	for _, ev := range events {
		dir := tracefs + "/events/" + strings.Replace(ev, ":", "/", 1)
		cmd = append(cmd, "echo stacktrace > "+dir+"/trigger", "echo 1 > "+dir+"/enable")
	}
	cmd = append(cmd, "echo 1 > "+tracefs+"/tracing_on")
	out, code, err := vm.Exec(ctx, strings.Join(cmd, " && "))
	if err != nil || code != 0 {
		return fmt.Errorf("lab: %s: trace start: exit %d %v %q", vm.Host, code, err, out)
	}
	return nil
}

// traceCollect stops the trace, reads it and counts its stacks into
// cv.Traces[phase] (per unit).
func (s *ScaleOutLab) traceCollect(ctx context.Context, vm *VM, events []string, cv *CallsVersion, phase string, units int64) error {
	if len(events) == 0 {
		return nil
	}
	out, code, err := vm.Exec(ctx, "echo 0 > "+tracefs+"/tracing_on && cat "+tracefs+"/trace")
	if err != nil || code != 0 {
		return fmt.Errorf("lab: %s: trace read: exit %d %v", vm.Host, code, err)
	}
	stacks := countStacks(out, units)
	if cv.Traces == nil {
		cv.Traces = map[string][]TracedStack{}
	}
	cv.Traces[phase] = stacks
	for _, st := range stacks {
		s.Lab.logf("calls: NFS %s: %s: %.2f per unit: %s by %s: %s", cv.Version, phase, st.Per, st.Event, st.Comm, strings.Join(st.Stack, " < "))
	}
	off := []string{}
	for _, ev := range events {
		dir := tracefs + "/events/" + strings.Replace(ev, ":", "/", 1)
		off = append(off, "echo 0 > "+dir+"/enable", "echo '!stacktrace' > "+dir+"/trigger")
	}
	vm.Exec(ctx, strings.Join(off, "; "))
	return nil
}

// countStacks parses a tracefs trace of events each followed by its
// "<stack trace>" and "=> func" lines, and counts the distinct (event,
// command, stack) triples.
func countStacks(trace string, units int64) []TracedStack {
	type key struct{ ev, comm, stack string }
	counts := map[key]int{}
	var cur *key
	var stack []string
	flush := func() {
		if cur != nil {
			cur.stack = strings.Join(stack, " < ")
			counts[*cur]++
		}
		cur, stack = nil, nil
	}
	for _, line := range strings.Split(trace, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "" || strings.HasPrefix(t, "#"):
		case strings.HasPrefix(t, "=> "):
			if cur != nil {
				stack = append(stack, strings.TrimPrefix(t, "=> "))
			}
		case strings.Contains(t, "<stack trace>"):
		default:
			// "comm-pid [cpu] flags ts: event: fields"
			flush()
			fields := strings.Fields(t)
			comm := fields[0]
			if i := strings.LastIndex(comm, "-"); i > 0 {
				comm = comm[:i]
			}
			ev := ""
			for _, f := range fields[1:] {
				if strings.HasSuffix(f, ":") && !strings.Contains(f, ".") && !strings.Contains(f, "=") {
					ev = strings.TrimSuffix(f, ":")
					break
				}
			}
			cur = &key{ev: ev, comm: comm}
		}
	}
	flush()
	var out []TracedStack
	for k, n := range counts {
		st := TracedStack{Event: k.ev, Comm: k.comm, Stack: strings.Split(k.stack, " < "), Count: n}
		if units > 0 {
			st.Per = float64(n) / float64(units)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}
