package main

// The hidden "man" command writes the manual pages the packages install:
// nfsdrop(8) from the command definitions below (so that a command or a
// flag added to the CLI cannot be missing from the manual; man_test.go
// checks both ways against --help), and nfsdrop.toml(5) from the
// configuration reference docs/config.md, which is itself generated from
// internal/config. packaging/build.sh runs it.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

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

// manMarkdown is nfsdrop(8) in the Markdown dialect of go-md2man.
func manMarkdown(app *cli.App) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%% NFSDROP 8 \"\" \"nfsdrop %s\" \"System Manager's Manual\"\n\n", manEscape(version))
	fmt.Fprintf(&b, "# NAME\n\nnfsdrop - %s\n\n", manEscape(app.Usage))
	b.WriteString("# SYNOPSIS\n\n**nfsdrop** *command* [*options*] [*arguments*]\n\n")
	b.WriteString("**nfsdrop** **--help** | **--version**\n\n")
	b.WriteString(manDescription)

	b.WriteString("# COMMANDS\n\n")
	b.WriteString("Options come before arguments. Every command accepts **--help** (**-h**), " +
		"which prints its options.\n\n")
	for _, cmd := range app.Commands {
		writeManCommand(&b, []string{"nfsdrop"}, cmd)
	}

	b.WriteString("# GLOBAL OPTIONS\n\n")
	b.WriteString("**--help**, **-h**\n: show the commands, or with a command its options\n\n")
	b.WriteString("**--version**, **-v**\n: print the version\n\n")
	b.WriteString(manTrailer)
	return b.Bytes(), nil
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

const manDescription = `# DESCRIPTION

nfsdrop owns the mailbox on shared NFS storage, for sites that run Postfix
in front of Maildirs on NFS. Any number of identical machines may deliver to
and serve any user at any time. One binary holds the LMTP delivery agent
(**nfsdrop lmtpd**) that Postfix's *mailbox_transport* or
*virtual_transport* hands mail to, the **nfsdrop deliver** command for
*mailbox_command* or a **pipe**(8) transport, the POP3 server
(**nfsdrop pop3d**), and the administrator's tools.

The servers are meant to run under systemd with socket activation: the
packages install *nfsdrop-lmtp.socket* (descriptor name "lmtp"),
*nfsdrop-pop3.socket* ("pop3") and *nfsdrop-pop3s.socket* ("pop3s") with
their services, which use *Type=notify* (READY=1, STATUS=, WATCHDOG=1 when
*WatchdogSec=* is set, RELOADING=1 on SIGHUP), and *nfsdrop-clean.timer*,
which runs **nfsdrop maildir clean** daily. Without socket activation the
servers listen on the addresses of *lmtp.listen*, *pop3.listen* and
*pop3.listen\_tls*.

The configuration file is described in **nfsdrop.toml**(5).

`

const manTrailer = `# EXIT STATUS

Exit codes follow **sysexits**(3), as Postfix reads them from
**nfsdrop deliver**. **nfsdrop deliver** exits only 0, 67, 69, 75 or 77:
Postfix bounces on every other non-zero status, so a configuration error,
a bad command line (unknown flag, no recipient, **--help**) or an internal
error (a panic) is 75 there. 64 and 78 come from the other commands.

**0**
: success (the message is stored)

**64**
: usage error

**67**
: unknown user

**69**
: refused for good (message too big, mail loop)

**75**
: temporary failure, try again later (store not mounted, user database or
NFS trouble; over quota when *store.quota\_action* is "defer")

**77**
: over quota

**78**
: configuration error (not from **nfsdrop deliver**, which answers 75)

# SIGNALS

**SIGTERM**, **SIGINT**
: the servers stop accepting connections and let sessions and deliveries in
progress finish (LMTP: up to *lmtp.shutdown\_timeout*).

**SIGHUP**
: reload the configuration, the user database and the TLS certificate.
Listen addresses and limits need a restart. A configuration that does not
load is logged and the running one is kept.

# ENVIRONMENT

**NFSDROP\_CONFIG**
: configuration file, when **--config** is not given.

**LISTEN\_FDS**, **LISTEN\_FDNAMES**, **NOTIFY\_SOCKET**, **WATCHDOG\_USEC**
: set by systemd for socket activation and readiness notification.

**RECIPIENT**, **SENDER**
: set by Postfix's **local**(8) for *mailbox\_command*; **nfsdrop deliver**
uses them when **-a** and **-f** are not given.

# FILES

*/etc/nfsdrop/nfsdrop.toml*
: the configuration, see **nfsdrop.toml**(5).

*/etc/nfsdrop/users*
: the default passwd-file user database.

*/run/nfsdrop/lmtp*
: the LMTP socket of the packaged *nfsdrop-lmtp.socket*.

*/var/mail/nfsdrop*
: the default mail root, normally an NFS mount; its mount marker
*.nfsdrop-mounted* must exist on the export.

*/usr/share/doc/nfsdrop/*
: installation, Postfix, NFS, HAProxy, migration and troubleshooting guides.

# SEE ALSO

**nfsdrop.toml**(5), **postfix**(1), **lmtp**(8), **pipe**(8),
**local**(8), **systemd.socket**(5), **systemd-analyze**(1), **nfs**(5)
`

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
