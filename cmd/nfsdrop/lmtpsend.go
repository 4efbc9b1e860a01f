package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/urfave/cli/v2"
)

func lmtpSendCommand() *cli.Command {
	return &cli.Command{
		Name:  "lmtp-send",
		Usage: "send one message over LMTP and print each recipient's reply (a test client)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Usage: "LMTP server `ADDRESS`: host:port or unix:/path", Required: true},
			&cli.StringFlag{Name: "from", Value: "sender@example.test", Usage: "envelope sender `ADDRESS`"},
			&cli.StringSliceFlag{Name: "to", Usage: "recipient `ADDRESS` (repeatable)", Required: true},
			&cli.StringFlag{Name: "file", Usage: "message `FILE` (\"-\" for standard input; default: a small test message)"},
		},
		Action: func(c *cli.Context) error {
			var msg []byte
			switch f := c.String("file"); f {
			case "":
				msg = []byte(fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: nfsdrop test\r\nDate: %s\r\n\r\nHello from nfsdrop lmtp-send.\r\n",
					c.String("from"), strings.Join(c.StringSlice("to"), ">, <"), time.Now().Format(time.RFC1123Z)))
			case "-":
				b, err := io.ReadAll(c.App.Reader)
				if err != nil {
					return err
				}
				msg = b
			default:
				b, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				msg = b
			}
			network, addr := "tcp", c.String("server")
			if strings.HasPrefix(addr, "unix:") {
				network, addr = "unix", addr[5:]
			}
			conn, err := net.DialTimeout(network, addr, 10*time.Second)
			if err != nil {
				return exitError(err.Error(), exTempFail)
			}
			cl := smtp.NewClientLMTP(conn)
			defer cl.Close()
			if err := cl.Hello("localhost"); err != nil {
				return exitError(err.Error(), exTempFail)
			}
			if err := cl.Mail(c.String("from"), nil); err != nil {
				return exitError(err.Error(), exUnavailable)
			}
			var accepted []string
			failed := 0
			for _, to := range c.StringSlice("to") {
				if err := cl.Rcpt(to, nil); err != nil {
					fmt.Fprintf(c.App.Writer, "%s: %v\n", to, err)
					failed++
					continue
				}
				accepted = append(accepted, to)
			}
			if len(accepted) > 0 {
				w, err := cl.Data()
				if err != nil {
					return exitError(err.Error(), exTempFail)
				}
				if _, err := io.Copy(w, bytes.NewReader(msg)); err != nil {
					return exitError(err.Error(), exTempFail)
				}
				resp, err := w.CloseWithLMTPResponse()
				var lerr smtp.LMTPDataError
				if err != nil && !errors.As(err, &lerr) {
					return exitError(err.Error(), exTempFail)
				}
				for _, to := range accepted {
					if r, ok := resp[to]; ok {
						fmt.Fprintf(c.App.Writer, "%s: 250 %s\n", to, r.StatusText)
					} else if e, ok := lerr[to]; ok {
						fmt.Fprintf(c.App.Writer, "%s: %d %d.%d.%d %s\n", to, e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
						failed++
					}
				}
			}
			cl.Quit()
			if failed > 0 {
				return exitError("", exUnavailable)
			}
			return nil
		},
	}
}
