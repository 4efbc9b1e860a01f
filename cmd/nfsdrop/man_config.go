package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
)

// configManPage turns the configuration reference (docs/config.md) into
// nfsdrop.toml(5).
func configManPage(md []byte, version string) ([]byte, error) {
	text := string(md)
	// The generator's "DO NOT EDIT" comment.
	if strings.HasPrefix(text, "<!--") {
		if i := strings.Index(text, "-->"); i >= 0 {
			text = strings.TrimLeft(text[i+3:], "\n")
		}
	}
	title, rest, ok := strings.Cut(text, "\n")
	if !ok || !strings.HasPrefix(title, "# ") {
		return nil, fmt.Errorf("configuration reference does not start with a title")
	}
	// Relative links point into the source tree; the packages install the
	// example configuration with the documentation.
	rest = relLink.ReplaceAllStringFunc(rest, func(m string) string {
		sub := relLink.FindStringSubmatch(m)
		target := sub[2]
		if strings.HasSuffix(target, "contrib/nfsdrop.toml") {
			target = "/usr/share/doc/nfsdrop/examples/nfsdrop.toml"
		}
		return sub[1] + " (" + target + ")"
	})
	// The summary table of each section repeats what each key's own
	// subsection says, and is too wide for a terminal.
	var kept []string
	for _, line := range strings.Split(rest, "\n") {
		if !strings.HasPrefix(line, "|") {
			kept = append(kept, line)
		}
	}
	rest = strings.Join(kept, "\n")
	var b strings.Builder
	fmt.Fprintf(&b, "%% NFSDROP.TOML 5 \"\" \"nfsdrop %s\" \"File Formats Manual\"\n\n", manEscape(version))
	b.WriteString("# NAME\n\nnfsdrop.toml - configuration file of nfsdrop\n\n")
	b.WriteString("# SYNOPSIS\n\n*/etc/nfsdrop/nfsdrop.toml*\n\n")
	b.WriteString("# DESCRIPTION\n")
	b.WriteString(rest)
	b.WriteString("\n# SEE ALSO\n\n**nfsdrop**(8)\n")
	return md2man.Render([]byte(b.String())), nil
}

var relLink = regexp.MustCompile(`\[([^\]]+)\]\(([^)]+)\)`)
