package config

import (
	"os"
	"strings"
	"testing"
)

const contribPath = "../../contrib/nfsdrop.toml"

// TestContribExample checks that the example configuration loads, sets every
// key, and has a comment on each key (directly above it, or above a group of
// keys with no blank line between).
func TestContribExample(t *testing.T) {
	c, err := Load(contribPath)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(contribPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for _, sec := range schema() {
		for _, f := range sec.fields {
			if f.kind == kindTables {
				// An example table, commented out: a live "volumes = []"
				// would clash with the [[...]] tables an administrator
				// uncomments.
				if !strings.Contains(string(data), "\n# [["+f.path+"]]\n") {
					t.Errorf("%s: no commented [[%s]] example", contribPath, f.path)
				}
				continue
			}
			if !c.src.defined[f.path] {
				t.Errorf("%s: key %s is missing", contribPath, f.path)
				continue
			}
			n := c.src.line(strings.Split(f.path, "."))
			if n == 0 {
				t.Errorf("%s: no line for key %s", contribPath, f.path)
				continue
			}
			commented := false
			for i := n - 2; i >= 0; i-- {
				l := strings.TrimSpace(lines[i])
				if strings.HasPrefix(l, "#") {
					commented = true
					break
				}
				if l == "" || strings.HasPrefix(l, "[") {
					break
				}
			}
			if !commented {
				t.Errorf("%s:%d: key %s has no comment above it", contribPath, n, f.path)
			}
		}
	}
}

// TestContribExampleNeedsNoClamd: the example is the file the packages
// install as /etc/nfsdrop/nfsdrop.toml, and the packages neither depend on
// nor recommend clamd. With scanning on, a fresh install answered every
// delivery with 451 4.7.1 until someone installed clamd; scanning stays off
// until the administrator turns it on.
func TestContribExampleNeedsNoClamd(t *testing.T) {
	c, err := Load(contribPath)
	if err != nil {
		t.Fatal(err)
	}
	if c.Scan.Enabled {
		t.Errorf("%s: scan.enabled = true, but the packages do not install clamd", contribPath)
	}
}
