// Command gendoc writes docs/config.md from internal/config/config.go. It is
// run by "go generate ./internal/config".
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nfsdrop/nfsdrop/internal/config"
)

func main() {
	src := flag.String("src", "config.go", "Go file declaring the configuration structs")
	out := flag.String("o", "", "output file (default standard output)")
	flag.Parse()
	if err := run(*src, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}

func run(src, out string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	md, err := config.ReferenceMarkdown(data)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if out == "" {
		_, err = os.Stdout.Write(md)
		return err
	}
	return os.WriteFile(out, md, 0o644)
}
