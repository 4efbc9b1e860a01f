package lab

import (
	"strings"
	"testing"
)

// A tracefs trace with stack triggers is counted per (event, command,
// stack), most frequent first, per unit.
func TestCountStacks(t *testing.T) {
	const trace = `# tracer: nop
#
         nfsdrop-812     [000] .....   101.000001: nfs4_getattr: error=0 (OK) fileid=00:2a:1 fhandle=0x1
         nfsdrop-812     [000] .....   101.000002: <stack trace>
 => nfs4_proc_getattr
 => __nfs_revalidate_inode
 => vfs_fstat
         nfsdrop-813     [001] .....   101.000003: nfs4_getattr: error=0 (OK) fileid=00:2a:2 fhandle=0x2
         nfsdrop-813     [001] .....   101.000004: <stack trace>
 => nfs4_proc_getattr
 => __nfs_revalidate_inode
 => vfs_fstat
       bareloop-900     [000] .....   102.000001: nfs4_getattr: error=0 (OK) fileid=00:2a:3 fhandle=0x3
       bareloop-900     [000] .....   102.000002: <stack trace>
 => nfs4_proc_getattr
 => nfs_lookup_verify_inode
`
	got := countStacks(trace, 2)
	if len(got) != 2 {
		t.Fatalf("%d stacks, want 2: %+v", len(got), got)
	}
	first := got[0]
	if first.Event != "nfs4_getattr" || first.Comm != "nfsdrop" || first.Count != 2 || first.Per != 1 ||
		strings.Join(first.Stack, " < ") != "nfs4_proc_getattr < __nfs_revalidate_inode < vfs_fstat" {
		t.Errorf("first: %+v", first)
	}
	if got[1].Comm != "bareloop" || got[1].Count != 1 || len(got[1].Stack) != 2 {
		t.Errorf("second: %+v", got[1])
	}
}
