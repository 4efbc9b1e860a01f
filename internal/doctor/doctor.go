// Package doctor checks a machine's mail root the way nfsdrop will use it:
// the NFS mount options, the mount marker, ownership and free space, whether
// link() and rename() behave, how long fsync takes, the file server's clock,
// and whether another machine writes Maildir names with the same host part.
//
// Every check yields one or more Results (OK, WARN or FAIL, with the reason
// and the fix). The checks that only interpret data (mountinfo, statfs
// numbers, clock readings) are plain functions so that tests can feed them
// fake input; Run puts them together against the real mail root.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Status is the verdict of one check.
type Status int

const (
	// OK means nothing to do (the detail may still carry information).
	OK Status = iota
	// WARN means nfsdrop works, but something costs time or hides a risk.
	WARN
	// FAIL means mail can be deferred, lost or duplicated: fix it.
	FAIL
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case WARN:
		return "WARN"
	case FAIL:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText makes a Status read as its name in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a Status name.
func (s *Status) UnmarshalText(b []byte) error {
	switch string(b) {
	case "OK":
		*s = OK
	case "WARN":
		*s = WARN
	case "FAIL":
		*s = FAIL
	default:
		return fmt.Errorf("unknown status %q", b)
	}
	return nil
}

// Result is one row of the report.
type Result struct {
	// Check names the check ("filesystem", "nfs-hard", "fsync", ...).
	Check  string `json:"check"`
	Status Status `json:"status"`
	// Detail is what was found.
	Detail string `json:"detail"`
	// Fix is what to do about a WARN or FAIL ("" for OK).
	Fix string `json:"fix,omitempty"`
}

func ok(check, detail string) Result { return Result{Check: check, Status: OK, Detail: detail} }
func warn(check, detail, fix string) Result {
	return Result{Check: check, Status: WARN, Detail: detail, Fix: fix}
}
func fail(check, detail, fix string) Result {
	return Result{Check: check, Status: FAIL, Detail: detail, Fix: fix}
}

// Report is the outcome of Run.
type Report struct {
	MailRoot string   `json:"mail_root"`
	HostPart string   `json:"host_part"`
	Status   Status   `json:"status"` // the worst status of all checks
	Checks   []Result `json:"checks"`
}

func (r *Report) add(res ...Result) {
	for _, x := range res {
		r.Checks = append(r.Checks, x)
		if x.Status > r.Status {
			r.Status = x.Status
		}
	}
}

// Count returns how many checks have status s.
func (r *Report) Count(s Status) int {
	n := 0
	for _, c := range r.Checks {
		if c.Status == s {
			n++
		}
	}
	return n
}

// Find returns the first result of the named check.
func (r *Report) Find(check string) (Result, bool) {
	for _, c := range r.Checks {
		if c.Check == check {
			return c, true
		}
	}
	return Result{}, false
}

// WriteText writes the report as an aligned table: CHECK, STATUS, DETAIL,
// with a "fix:" line under each WARN and FAIL row, and a summary line.
func (r *Report) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "mail root %s, host part %s\n\n", r.MailRoot, r.HostPart)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Check, c.Status, oneLine(c.Detail))
		if c.Status != OK && c.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", oneLine(c.Fix))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s: %d failed, %d warnings, %d ok\n", r.Status, r.Count(FAIL), r.Count(WARN), r.Count(OK))
	return err
}

// WriteJSON writes the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// oneLine keeps a table row on one line (and tabs out of the table).
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
