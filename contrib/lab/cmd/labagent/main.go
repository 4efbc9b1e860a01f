// Command labagent is the control channel of the lab's systemd VM
// (contrib/lab, SystemdImage): a service of the booted Debian system that
// speaks the protocol of the busybox VMs' lab-ctl, so that lab.VM's Ctl,
// Exec and Ping work unchanged. One line per TCP connection:
//
//	ping            "ok HOST UPTIME"
//	exec COMMAND    runs COMMAND with sh -c, prints its output and "exit=CODE"
//	poweroff        "ok", then systemctl poweroff
//	reboot          "ok", then systemctl reboot
//
//	labagent [-listen :7777]
//
// It prints "nfsdrop-lab: ready HOST" on /dev/console once it listens,
// which lab.VM.WaitReady waits for. It has no authentication: it listens
// only on the lab's private network.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", ":7777", "TCP address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "labagent:", err)
		os.Exit(1)
	}
	host, _ := os.Hostname()
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		fmt.Fprintf(c, "nfsdrop-lab: ready %s\n", host)
		c.Close()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "labagent:", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go serve(c, host)
	}
}

func serve(c net.Conn, host string) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	cmd, args, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch cmd {
	case "ping":
		up, _ := os.ReadFile("/proc/uptime")
		u, _, _ := strings.Cut(string(up), " ")
		fmt.Fprintf(c, "ok %s %s\n", host, u)
	case "exec":
		sh := exec.Command("sh", "-c", args)
		sh.Stdout, sh.Stderr = c, c
		code := 0
		if err := sh.Run(); err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else {
				fmt.Fprintln(c, err)
			}
		}
		fmt.Fprintf(c, "exit=%d\n", code)
	case "poweroff", "reboot":
		fmt.Fprintln(c, "ok")
		c.Close()
		// --no-block: the agent itself is stopped by what it starts.
		exec.Command("systemctl", "--no-block", cmd).Run()
	default:
		fmt.Fprintf(c, "err unknown command %q\n", cmd)
	}
}
