package lab

import (
	"os"
	"testing"
)

// TestParseMountStatsV41 reads /proc/self/mountstats of a lab VM with an
// NFSv4.1 mount (testdata, taken from a -calls run): NFSv4 procedure
// names, OPENs apart from the mutating calls.
func TestParseMountStatsV41(t *testing.T) {
	b, err := os.ReadFile("testdata/mountstats-v41.txt")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := ParseMountStats(string(b), MountPoint)
	if err != nil {
		t.Fatal(err)
	}
	for op, want := range map[string]int64{"OPEN": 40, "OPEN_NOATTR": 18, "CLOSE": 57, "GETATTR": 477, "SEQUENCE": 0, "EXCHANGE_ID": 2} {
		if got := ms.Ops[op].Ops; got != want {
			t.Errorf("%s = %d, want %d", op, got, want)
		}
	}
	if got := ms.OpenOps(); got != 58 {
		t.Errorf("OpenOps = %d, want 58", got)
	}
	// WRITE 38, SETATTR 38, REMOVE 49, RENAME 1, LINK 37; no CREATE (v4
	// creates files with OPEN).
	if got := ms.MutatingOps(); got != 163 {
		t.Errorf("MutatingOps = %d, want 163", got)
	}
	if got, want := ms.CallsPer(1), "1200.0 / 163.0 + 58.0 OPEN"; got != want {
		t.Errorf("CallsPer = %q, want %q", got, want)
	}
	if ms.XprtConnects != 2 {
		t.Errorf("XprtConnects = %d, want 2", ms.XprtConnects)
	}
}

func TestMountOptsFor(t *testing.T) {
	for _, tc := range []struct{ vers, extra, want string }{
		{"3", "", DefaultMountOpts},
		{"4.1", SiteMountOpts, "vers=4.1,proto=tcp,hard,actimeo=3,lookupcache=positive,noatime"},
		{"4.2", "", "vers=4.2,proto=tcp"},
	} {
		got, err := MountOptsFor(tc.vers, tc.extra)
		if err != nil || got != tc.want {
			t.Errorf("MountOptsFor(%q, %q) = %q, %v; want %q", tc.vers, tc.extra, got, err, tc.want)
		}
		if v := NFSVersionOf(got); v != tc.vers {
			t.Errorf("NFSVersionOf(%q) = %q", got, v)
		}
	}
	if _, err := MountOptsFor("4.0", ""); err == nil {
		t.Error("MountOptsFor(4.0): no error")
	}
}
