package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PrepareNFSDrop lays out the export for nfsdrop on vms machines: the
// static binary at bin/nfsdrop (binary copied, or ./cmd/nfsdrop built
// with CGO_ENABLED=0 when binary is ""), conf/users with users u1..uN
// @lab.test (password "pw"), conf/mxN.test.toml for each VM (ProofConfig)
// and the mount marker in mail/. Call it before the NFS server starts.
func (l *Lab) PrepareNFSDrop(ctx context.Context, binary string, vms, users int) error {
	ex := l.Export
	for _, d := range []string{"bin", "conf", "run", "out", "mail"} {
		if err := os.MkdirAll(filepath.Join(ex, d), 0o755); err != nil {
			return err
		}
	}
	dst := filepath.Join(ex, "bin", "nfsdrop")
	if binary == "" {
		if err := l.GoBuild(ctx, "./cmd/nfsdrop", dst); err != nil {
			return err
		}
	} else if err := copyFile(binary, dst, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(ex, "mail", ".nfsdrop-mounted"), nil, 0o644); err != nil {
		return err
	}
	var b strings.Builder
	for u := 1; u <= users; u++ {
		fmt.Fprintf(&b, "u%d@lab.test:{PLAIN}pw::::::\n", u)
	}
	if err := os.WriteFile(filepath.Join(ex, "conf", "users"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	for n := 1; n <= vms; n++ {
		host := fmt.Sprintf("mx%d.test", n)
		if err := os.WriteFile(filepath.Join(ex, "conf", host+".toml"), []byte(ProofConfig(host, VMAddr(n))), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteScript writes a VM script into the export's run/ directory and
// returns its path for VMConfig.Script. Write scripts before the NFS
// server starts, or under a new name: ganesha caches what it served.
func (l *Lab) WriteScript(name, text string) (string, error) {
	if err := os.MkdirAll(filepath.Join(l.Export, "run"), 0o755); err != nil {
		return "", err
	}
	rel := "run/" + name
	return rel, os.WriteFile(filepath.Join(l.Export, rel), []byte(text), 0o755)
}

// DaemonScript is a VM script that runs the export's nfsdrop in the
// foreground with args, in which {host} stands for the VM's host name:
// DaemonScript("lmtpd", "-c", "/mnt/lab/conf/{host}.toml"). Its log goes
// to the VM's console; Poweroff sends it SIGTERM.
func DaemonScript(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		a = strings.ReplaceAll(a, "'", `'\''`)
		q[i] = "'" + strings.ReplaceAll(a, "{host}", `'"$LAB_HOST"'`) + "'"
	}
	return "#!/bin/sh\n# written by contrib/lab\nexec \"$LAB_MNT/bin/nfsdrop\" " + strings.Join(q, " ") + "\n"
}

// CommandScript is a VM script that runs a shell command and writes its
// output to out/HOST/NAME.out and its exit status to out/HOST/NAME.exit
// in the export, for measurements. The output is kept in the VM until the
// command ends, so that writing it adds no NFS calls while it runs.
func CommandScript(name, command string) string {
	return fmt.Sprintf(`#!/bin/sh
# written by contrib/lab
O="$LAB_MNT/out/$LAB_HOST"
mkdir -p "$O"
( %s ) >/tmp/%s.out 2>&1
echo $? >/tmp/%s.exit
cp /tmp/%s.out /tmp/%s.exit "$O/"
sync
`, command, name, name, name, name)
}
