package prefork

// #include "prefork.h"
import "C"

import (
	"os"
	"os/signal"
	"syscall"
)

// relaySignals turns SIGTERM (and, in the master, SIGINT) into prefork_shutdown and, in the
// master, SIGHUP into prefork_reload, SIGUSR2 into prefork_upgrade and SIGTTIN and SIGTTOU
// into prefork_scale_children,
// until the returned function is called. os/signal rather
// than the library's handlers keeps the Go runtime's signal handling intact. A child takes
// SIGINT and SIGHUP too, but ignores them: a terminal's Ctrl-C or hangup reaches every
// process of the group, and the master decides what the children do.
func relaySignals(child bool) (stop func()) {
	sigs := make(chan os.Signal, 4)
	relayed := []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2}
	if !child {
		// A child keeps their default: the master scales, not each child.
		relayed = append(relayed, syscall.SIGTTIN, syscall.SIGTTOU)
	}
	signal.Notify(sigs, relayed...)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case sig := <-sigs:
				switch {
				case child && sig != syscall.SIGTERM:
				case sig == syscall.SIGHUP:
					C.prefork_reload()
				case sig == syscall.SIGUSR2:
					C.prefork_upgrade()
				case sig == syscall.SIGTTIN:
					C.prefork_scale_children(1)
				case sig == syscall.SIGTTOU:
					C.prefork_scale_children(-1)
				default:
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
