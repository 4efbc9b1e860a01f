// Command nfsdrop is the single binary: the LMTP delivery agent, the POP3
// server, the deliver command for Postfix's mailbox_command, and the
// administrator's tools.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

const defaultConfig = "/etc/nfsdrop/nfsdrop.toml"

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run is main without the process: tests call it.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	if err := app.Run(args); err != nil {
		var ec cli.ExitCoder
		if asExitCoder(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(stderr, "nfsdrop:", msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(stderr, "nfsdrop:", err)
		return exUsage
	}
	return 0
}

func asExitCoder(err error, ec *cli.ExitCoder) bool {
	c, ok := err.(cli.ExitCoder)
	if ok {
		*ec = c
	}
	return ok
}

func configFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "config",
		Aliases: []string{"c"},
		Usage:   "configuration `FILE`",
		Value:   defaultConfig,
		EnvVars: []string{"NFSDROP_CONFIG"},
	}
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "nfsdrop",
		Usage:     "Maildir delivery (LMTP, deliver) and POP3 for mail on shared NFS storage",
		Version:   versionString(),
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		// Exit codes are ours (sysexits); never let the library exit.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			deliverCommand(),
			lmtpdCommand(),
			pop3dCommand(),
			serveCommand(),
			userCommand(),
			maildirCommand(),
			checkCommand(),
			lmtpSendCommand(),
			doctorCommand(),
			manCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "nfsdrop", versionString())
					return nil
				},
			},
		},
	}
}

func versionString() string {
	if commit != "" {
		return version + " (" + commit + ")"
	}
	return version
}
