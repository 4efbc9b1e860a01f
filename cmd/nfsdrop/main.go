// Command nfsdrop is the single binary: the LMTP delivery agent, the POP3
// server, the deliver command for Postfix's mailbox_command, and the
// administrator's tools.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/urfave/cli/v2"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

const defaultConfig = "/etc/nfsdrop/nfsdrop.toml"

// cpuProfileEnv names a file to write a Go CPU profile of the whole run
// to (runtime/pprof; read it with go tool pprof). It exists for the
// benchmarks (bench/lmtp-variants.sh BENCH_PPROF=1): a file, not a debug
// listener, so nothing is exposed on the network; unset, nothing is
// profiled. A daemon writes the profile when it stops (SIGTERM).
const cpuProfileEnv = "NFSDROP_CPUPROFILE"

func main() {
	stop := startCPUProfile(os.Getenv(cpuProfileEnv), os.Stderr)
	code := run(os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// startCPUProfile starts profiling into path ("" profiles nothing) and
// returns what ends it. A profile that cannot start is reported and the
// command runs anyway: profiling is a measuring aid, never a reason to fail.
func startCPUProfile(path string, stderr io.Writer) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(stderr, "nfsdrop: %s: %v\n", cpuProfileEnv, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(stderr, "nfsdrop: %s: %v\n", cpuProfileEnv, err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "nfsdrop: %s: %v\n", cpuProfileEnv, err)
		}
	}
}

// run is main without the process: tests call it.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runApp(newApp(stdin, stdout, stderr), args, stderr)
}

// runApp runs app with args and turns its outcome into the exit status.
// The deliver command's status is narrowed to what Postfix must see (see
// deliverExitStatus), whatever went wrong.
func runApp(app *cli.App, args []string, stderr io.Writer) int {
	err := app.Run(args)
	if commandName(args) == "deliver" {
		return deliverExitStatus(err, app.Metadata[deliverRanKey] == true, stderr)
	}
	return exitStatus(err, stderr)
}

// exitStatus reports err on stderr and returns its exit code: the code of a
// cli.ExitCoder, else EX_USAGE (the library's own errors are usage errors).
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return exOK
	}
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

func asExitCoder(err error, ec *cli.ExitCoder) bool {
	c, ok := err.(cli.ExitCoder)
	if ok {
		*ec = c
	}
	return ok
}

// commandName is the command args run: the first argument after the
// program name that is not a flag ("" for none). The app has no global
// flags that take a value, so this is the one cli dispatches on.
func commandName(args []string) string {
	for _, a := range args[min(1, len(args)):] {
		if !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return ""
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
