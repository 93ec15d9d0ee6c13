package prefork_test

import (
	"sync"
	"testing"
	"unsafe"

	"libprefork.dev/prefork"
)

// Exchanges are carved from shared slabs by concurrent handler threads: no two requests may
// ever get the same one, or a retained Request would alias a later request.
func TestExchangesAreNeverShared(t *testing.T) {
	const goroutines, each = 8, 5000
	// Pointers, not addresses: the slabs must stay alive, or the collector could hand a freed
	// one's address out again.
	got := make([][]unsafe.Pointer, goroutines)
	var wg sync.WaitGroup
	for g := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				got[g] = append(got[g], prefork.NewExchange())
			}
		}()
	}
	wg.Wait()
	seen := make(map[unsafe.Pointer]bool, goroutines*each)
	for _, addrs := range got {
		for _, a := range addrs {
			if seen[a] {
				t.Fatalf("exchange %p handed out twice", a)
			}
			seen[a] = true
		}
	}
}
