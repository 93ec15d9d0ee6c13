package prefork

// #include "prefork.h"
import "C"

import (
	"os"
	"os/signal"
	"syscall"
)

// relaySignals turns SIGTERM (and, in the master, SIGINT) into prefork_shutdown until the
// returned function is called. os/signal rather than the library's handlers keeps the Go
// runtime's signal handling intact. A child takes SIGINT too, but ignores it: a terminal's
// Ctrl-C reaches every process of the group, and the master stops the children itself.
func relaySignals(child bool) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGTERM || !child {
					C.prefork_shutdown()
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
		<-finished
	}
}
