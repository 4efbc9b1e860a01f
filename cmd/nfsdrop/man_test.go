package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

// helpOf runs `nfsdrop PATH... --help` and returns its output.
func helpOf(t *testing.T, path []string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	args := append(append([]string{"nfsdrop"}, path...), "--help")
	want := 0
	if len(path) > 0 && path[0] == "deliver" {
		want = exTempFail // help is no delivery: Postfix must not count it as one
	}
	if code := run(args, strings.NewReader(""), &out, &errOut); code != want {
		t.Fatalf("%s: exit %d\n%s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// helpSection returns the lines of a section ("COMMANDS:", "OPTIONS:") of
// a help text.
func helpSection(help, name string) []string {
	var lines []string
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(line, name):
			in = true
		case line != "" && line[0] != ' ':
			in = false
		case in && strings.TrimSpace(line) != "":
			lines = append(lines, line)
		}
	}
	return lines
}

// helpFlags returns the flags an OPTIONS section lists ("--config FILE,
// -c FILE  usage" gives --config and -c).
func helpFlags(lines []string) []string {
	var flags []string
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "-") {
			continue // a wrapped usage line
		}
		names, _, _ := strings.Cut(line, "  ")
		for _, f := range strings.FieldsFunc(names, func(r rune) bool { return r == ' ' || r == ',' }) {
			if strings.HasPrefix(f, "-") {
				flags = append(flags, f)
			}
		}
	}
	// A repeatable flag is shown twice ("--rcpt ADDRESS, -a ADDRESS [
	// --rcpt ADDRESS, -a ADDRESS ]").
	slices.Sort(flags)
	return slices.Compact(flags)
}

// helpTree walks the help texts from the top: command path -> its flags
// (without --help/-h, which every command has).
func helpTree(t *testing.T) (cmds map[string][]string, global []string) {
	cmds = map[string][]string{}
	var walk func(path []string)
	walk = func(path []string) {
		help := helpOf(t, path)
		if len(path) > 0 {
			flags := helpFlags(helpSection(help, "OPTIONS:"))
			if !slices.Contains(flags, "--help") {
				t.Errorf("nfsdrop %s --help lists no --help", strings.Join(path, " "))
			}
			flags = slices.DeleteFunc(flags, func(f string) bool { return f == "--help" || f == "-h" })
			cmds["nfsdrop "+strings.Join(path, " ")] = flags
		} else {
			global = helpFlags(helpSection(help, "GLOBAL OPTIONS:"))
		}
		for _, line := range helpSection(help, "COMMANDS:") {
			name := strings.TrimSuffix(strings.Fields(line)[0], ",")
			if name == "help" {
				continue
			}
			walk(append(append([]string{}, path...), name))
		}
	}
	walk(nil)
	return cmds, global
}

var (
	roffFont = regexp.MustCompile(`\\f[BIRP]`)
	roffFlag = regexp.MustCompile(`(?:^|[ ,])(--?[a-zA-Z0-9][-a-zA-Z0-9]*)`)
)

// manTree reads the rendered nfsdrop(8): each command's .SS heading and
// the flags of the definition-list terms (.TP) under it, and the flags of
// GLOBAL OPTIONS.
func manTree(page string) (cmds map[string][]string, global []string) {
	cmds = map[string][]string{}
	var cur *[]string
	var curName string
	lines := strings.Split(page, "\n")
	for i, line := range lines {
		clean := strings.ReplaceAll(roffFont.ReplaceAllString(line, ""), `\-`, "-")
		switch {
		case strings.HasPrefix(line, ".SH "):
			cur, curName = nil, ""
			if strings.TrimSpace(clean[4:]) == "GLOBAL OPTIONS" {
				cur = &global
			}
		case strings.HasPrefix(line, ".SS "):
			curName = strings.TrimSpace(clean[4:])
			cmds[curName] = []string{}
			f := cmds[curName]
			cur = &f
		case line == ".TP" && cur != nil && i+1 < len(lines):
			term := strings.ReplaceAll(roffFont.ReplaceAllString(lines[i+1], ""), `\-`, "-")
			for _, m := range roffFlag.FindAllStringSubmatch(term, -1) {
				*cur = append(*cur, m[1])
			}
			if curName != "" {
				cmds[curName] = *cur
			}
		}
	}
	for k := range cmds {
		slices.Sort(cmds[k])
	}
	slices.Sort(global)
	return cmds, global
}

// TestManPageMatchesHelp: nfsdrop(8) and --help never disagree. Every
// command (and subcommand) that help lists has a section in the manual and
// the other way round, with the same flags.
func TestManPageMatchesHelp(t *testing.T) {
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	page, err := manPage(app)
	if err != nil {
		t.Fatal(err)
	}
	helpCmds, helpGlobal := helpTree(t)
	manCmds, manGlobal := manTree(string(page))
	if len(helpCmds) < 10 {
		t.Fatalf("help lists only %d commands: %v", len(helpCmds), helpCmds)
	}
	for name, flags := range helpCmds {
		mf, ok := manCmds[name]
		if !ok {
			t.Errorf("%q is in --help but not in nfsdrop(8)", name)
			continue
		}
		if !slices.Equal(flags, mf) {
			t.Errorf("%s: --help has flags %q, nfsdrop(8) %q", name, flags, mf)
		}
	}
	for name := range manCmds {
		if _, ok := helpCmds[name]; !ok {
			t.Errorf("%q is in nfsdrop(8) but not in --help", name)
		}
	}
	if !slices.Equal(helpGlobal, manGlobal) {
		t.Errorf("global flags: --help %q, nfsdrop(8) %q", helpGlobal, manGlobal)
	}
	if _, ok := manCmds["nfsdrop man"]; ok {
		t.Error("the hidden man command is in the manual")
	}
}

// TestConfigManPage: nfsdrop.toml(5) has a section for every key of the
// configuration reference, and no table (too wide for a terminal).
func TestConfigManPage(t *testing.T) {
	md, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := configManPage(md, "1.0")
	if err != nil {
		t.Fatal(err)
	}
	keys := regexp.MustCompile("(?m)^### `([a-z_.]+)`").FindAllSubmatch(md, -1)
	if len(keys) < 20 {
		t.Fatalf("docs/config.md has only %d keys", len(keys))
	}
	for _, k := range keys {
		if !bytes.Contains(page, []byte(".SS "+strings.ReplaceAll(string(k[1]), "_", `\_`))) &&
			!bytes.Contains(page, []byte(".SS \\fB"+string(k[1]))) && !bytes.Contains(page, []byte(".SS "+string(k[1]))) {
			t.Errorf("nfsdrop.toml(5) has no section for %s", k[1])
		}
	}
	for _, want := range []string{".TH NFSDROP.TOML 5", ".SH NAME", ".SH SEE ALSO"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("nfsdrop.toml(5) lacks %q", want)
		}
	}
	if bytes.Contains(page, []byte(".TS")) {
		t.Error("nfsdrop.toml(5) has a table")
	}
}

// TestManCommand writes both pages as packaging/build.sh does.
func TestManCommand(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	ref := filepath.Join(testenv.RepoRoot(), "docs", "config.md")
	if code := run([]string{"nfsdrop", "man", "-o", dir, "--config-reference", ref}, strings.NewReader(""), &out, &errOut); code != 0 {
		t.Fatalf("nfsdrop man: exit %d: %s", code, errOut.String())
	}
	for _, f := range []string{"nfsdrop.8", "nfsdrop.toml.5"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(".TH ")) {
			t.Errorf("%s is not a manual page", f)
		}
	}
}
