package main

// The hidden "man" command writes the manual pages the packages install:
// nfsdrop(8) from the command definitions (so that a command or a flag
// added to the CLI cannot be missing from the manual; man_test.go checks
// both ways against --help) around the hand-written sections of
// nfsdrop.8.md, and nfsdrop.toml(5) from the configuration reference
// docs/config.md, which is itself generated from internal/config
// (man_config.go). packaging/build.sh runs it.
//
// urfave/cli's own (*cli.App).ToMan does not fit nfsdrop(8): it titles a
// subcommand by its own name only ("check", not "nfsdrop maildir check"),
// prints flags as paragraphs ("**--config, -c**=\"\"", placeholder lost)
// rather than a definition list, leaves out each command's Description,
// ArgsUsage, environment variables and required flags, does not escape
// Markdown in usage texts (mailbox_command turns italic), writes no version
// in the title, and has no place for EXIT STATUS, SIGNALS, ENVIRONMENT,
// FILES or SEE ALSO. What is kept here is the part it lacks: one
// definition list entry per flag, and the commands in a page template.

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/urfave/cli/v2"
)

func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "write the manual pages nfsdrop.8 and nfsdrop.toml.5",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: ".", Usage: "write the pages into `DIR`"},
			&cli.StringFlag{Name: "config-reference", Usage: "also write nfsdrop.toml.5 from `FILE` (docs/config.md)"},
		},
		Action: func(c *cli.Context) error {
			dir := c.String("output")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			page, err := manPage(c.App)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "nfsdrop.8"), page, 0o644); err != nil {
				return err
			}
			if ref := c.String("config-reference"); ref != "" {
				md, err := os.ReadFile(ref)
				if err != nil {
					return err
				}
				page, err := configManPage(md, version)
				if err != nil {
					return fmt.Errorf("%s: %w", ref, err)
				}
				if err := os.WriteFile(filepath.Join(dir, "nfsdrop.toml.5"), page, 0o644); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// manPage renders nfsdrop(8) as roff.
func manPage(app *cli.App) ([]byte, error) {
	md, err := manMarkdown(app)
	if err != nil {
		return nil, err
	}
	return md2man.Render(md), nil
}

// manPageTemplate is nfsdrop(8) without its commands, in the Markdown
// dialect of go-md2man, for text/template: {{.Version}}, {{.Usage}} (the
// app's, escaped) and {{.Commands}}.
//
//go:embed nfsdrop.8.md
var manPageTemplate string

// manMarkdown is nfsdrop(8) in the Markdown dialect of go-md2man: the
// hand-written sections of nfsdrop.8.md around the commands and their
// flags, made from the command definitions.
func manMarkdown(app *cli.App) ([]byte, error) {
	var cmds bytes.Buffer
	for _, cmd := range app.Commands {
		writeManCommand(&cmds, []string{"nfsdrop"}, cmd)
	}
	tmpl, err := template.New("nfsdrop.8").Parse(manPageTemplate)
	if err != nil {
		return nil, fmt.Errorf("nfsdrop.8.md: %w", err)
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, struct{ Version, Usage, Commands string }{
		Version: manEscape(version), Usage: manEscape(app.Usage), Commands: cmds.String(),
	})
	return b.Bytes(), err
}

func writeManCommand(b *bytes.Buffer, parents []string, cmd *cli.Command) {
	if cmd.Hidden {
		return
	}
	path := append(append([]string{}, parents...), cmd.Name)
	fmt.Fprintf(b, "### %s\n\n", strings.Join(path, " "))
	synopsis := "**" + strings.Join(path, " ") + "**"
	if len(cmd.VisibleFlags()) > 0 {
		synopsis += " [*options*]"
	}
	if len(cmd.Subcommands) > 0 {
		synopsis += " *subcommand*"
	}
	if args := strings.TrimSpace(cmd.ArgsUsage); args != "" {
		synopsis += " *" + manEscape(args) + "*"
	}
	b.WriteString(synopsis + "\n\n")
	if cmd.Usage != "" {
		b.WriteString(manSentence(manEscape(cmd.Usage)) + "\n\n")
	}
	if cmd.Description != "" {
		b.WriteString(manParagraphs(cmd.Description))
	}
	for _, f := range cmd.VisibleFlags() {
		writeManFlag(b, f)
	}
	for _, sub := range cmd.Subcommands {
		writeManCommand(b, path, sub)
	}
}

// writeManFlag writes one flag as a definition list item:
// **--config**, **-c** *FILE* followed by its usage, default and
// environment variables.
func writeManFlag(b *bytes.Buffer, f cli.Flag) {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return
	}
	placeholder, usage := unquote(df.GetUsage())
	var names []string
	for _, n := range f.Names() {
		dash := "--"
		if len(n) == 1 {
			dash = "-"
		}
		names = append(names, "**"+manEscape(dash+n)+"**")
	}
	term := strings.Join(names, ", ")
	if df.TakesValue() {
		if placeholder == "" {
			placeholder = "value"
		}
		term += " *" + placeholder + "*"
	}
	desc := manEscape(usage)
	if df.TakesValue() {
		def := df.GetDefaultText()
		if def == "" {
			def = df.GetValue()
		}
		if def != "" && def != `""` {
			desc += " (default: " + manEscape(strings.Trim(def, `"`)) + ")"
		}
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		desc += "; environment " + manEscape("$"+strings.Join(env, ", $"))
	}
	if rf, ok := f.(cli.RequiredFlag); ok && rf.IsRequired() {
		desc += "; required"
	}
	fmt.Fprintf(b, "%s\n: %s\n\n", term, desc)
}

// unquote splits "configuration `FILE`" into the placeholder FILE and the
// usage text without backquotes, as cli's help does.
func unquote(usage string) (string, string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "", usage
	}
	name := usage[i+1 : i+1+j]
	return name, usage[:i] + name + usage[i+1+j+1:]
}

// manEscape keeps Markdown from reading text as emphasis or links.
func manEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `_`, `\_`, "`", "\\`", `[`, `\[`, `]`, `\]`, `<`, `\<`)
	return r.Replace(s)
}

// manSentence capitalizes a usage line and ends it with a period.
func manSentence(s string) string {
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// manParagraphs turns a command's Description (lines wrapped at about 76
// columns, paragraphs separated by blank lines) into Markdown paragraphs.
func manParagraphs(desc string) string {
	var b strings.Builder
	for _, para := range strings.Split(strings.TrimSpace(desc), "\n\n") {
		lines := strings.Fields(para)
		b.WriteString(manEscape(strings.Join(lines, " ")) + "\n\n")
	}
	return b.String()
}
