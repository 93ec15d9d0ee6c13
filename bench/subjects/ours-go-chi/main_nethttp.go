//go:build nethttp

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address, host:port")
	flag.Int("children", 1, "ignored: one process, GOMAXPROCS threads (the ctl script sets it)")
	flag.Parse()

	ln, err := net.Listen("tcp4", *addr)
	if err != nil {
		log.Fatalf("chi-hello-nethttp: %v", err)
	}
	srv := &http.Server{Handler: router()}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	fmt.Printf("ready pid=%d children=\n", os.Getpid())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("chi-hello-nethttp: %v", err)
	}
}
