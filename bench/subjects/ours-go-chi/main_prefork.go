//go:build !nethttp

package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"

	"libprefork.dev/prefork"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address, host:port")
	children := flag.Int("children", 0, "child processes (0: one per CPU)")
	threads := flag.Int("handler-threads", 0, "handler threads per child (0: the event loop)")
	flag.Parse()

	p := prefork.New(prefork.HTTPHandler(router()))
	p.Children = *children
	p.HandlerThreads = *threads
	p.OnMasterReady = func(pids []int) error {
		s := make([]string, len(pids))
		for i, pid := range pids {
			s[i] = strconv.Itoa(pid)
		}
		fmt.Printf("ready pid=%d children=%s\n", os.Getpid(), strings.Join(s, ","))
		return nil
	}
	if err := p.ListenAndServe(*addr); err != nil {
		log.Fatalf("chi-hello: %v", err)
	}
}
