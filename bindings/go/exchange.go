package prefork

// #include "shim.h"
import "C"

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// call is one request's state while its handler runs, which its Request and Response reach
// through their call pointer. It is live for them while it names them (req, resp): once the
// handler returns it names none, and then another request's, so a Request or Response kept
// past its handler reads empty and fails with ErrState instead of reaching a later request.
// That makes calls reusable: the event loop keeps one for each place in a batch, and handler
// threads take theirs from a pool, so a request allocates only its exchange.
type call struct {
	req  *Request
	resp *Response
	c    *C.prefork_request
	rc   *C.prefork_response
	// The C callback's exchange: the request line, and the buffers where the response's
	// status, fields and body are staged (see Response). nil for a deferred Response's call.
	x   *C.goprefork_exchange
	srv *server
	// n is the number of fields of rp this response staged, or -1 when it does not stage its
	// fields in rp's buffer (rp is nil with handler threads).
	n  int
	rp *replay
	// The response ends its batch: the library must send it (or wait for it) before it
	// answers the next request, so the handler of the next one runs in a later batch. Set
	// when it is deferred, streams its body, may close the connection, or panicked.
	ends bool
	// Set by Defer, on the call the deferred Response moves to: a call of its own, never
	// reused, which outlives the handler.
	d *deferred
}

// exchange is the Request and Response of one request: distinct addresses for every request
// (a Request kept past its handler must never alias a later one), 16 bytes.
type exchange struct {
	req  Request
	resp Response
}

// exchangesPerSlab is how many exchanges one allocation carves: an allocation per request cost
// 229 of 3,506 instructions per request (bench/instructions). A retained Request keeps its
// whole slab (1 KiB) alive instead of its own 16 bytes.
const exchangesPerSlab = 64

// loopSlab hands out the event loop's exchanges, one goroutine's at a time: no atomics.
type loopSlab struct {
	xs   *[exchangesPerSlab]exchange
	used int
}

func (l *loopSlab) next() *exchange {
	if l.xs == nil || l.used == exchangesPerSlab {
		l.xs, l.used = new([exchangesPerSlab]exchange), 0
	}
	l.used++
	return &l.xs[l.used-1]
}

// sharedSlab is the exchanges of handler threads, which take them concurrently.
type sharedSlab struct {
	used atomic.Int32
	xs   [exchangesPerSlab]exchange
}

var currentSlab atomic.Pointer[sharedSlab]

// newExchange returns an exchange no request has had, for a handler thread.
func newExchange() *exchange {
	for {
		s := currentSlab.Load()
		if s != nil {
			if i := s.used.Add(1) - 1; i < exchangesPerSlab {
				return &s.xs[i]
			}
		}
		fresh := new(sharedSlab)
		fresh.used.Store(1)
		if currentSlab.CompareAndSwap(s, fresh) {
			return &fresh.xs[0]
		}
	}
}

// threadCalls are the calls of handler threads, live only while their handler runs.
var threadCalls = sync.Pool{New: func() any { return new(call) }}

// handleBatch runs the handler on reqs in order, each in its place's call, up to the first
// response that ends the batch, and returns how many it answered. A panic answers its request
// 500 and ends the batch there. One deferred recover for the batch rather than one per
// request: 45 instructions a request (bench/instructions).
func (s *server) handleBatch(reqs []*C.prefork_request, resps []*C.prefork_response, xs []C.goprefork_exchange) (answered int) {
	i := 0
	defer func() {
		if v := recover(); v != nil {
			s.recovered(v, &s.calls[i])
			answered = i + 1
		}
	}()
	for ; i < len(reqs); i++ {
		k := &s.calls[i]
		k.open(s.slab.next(), reqs[i], resps[i], &xs[i])
		if s.run(k) {
			return i + 1
		}
	}
	return len(reqs)
}

// handleOne runs the handler on one request in call k, as handleBatch does, with a recover of
// its own. Returns whether the response ends its batch.
func (s *server) handleOne(k *call, x *exchange, creq *C.prefork_request, cresp *C.prefork_response, cx *C.goprefork_exchange) (ends bool) {
	defer func() {
		if v := recover(); v != nil {
			s.recovered(v, k)
			ends = true
		}
	}()
	k.open(x, creq, cresp, cx)
	return s.run(k)
}

// open makes k the call of the request in x, staging its response in cx (and its fields in
// k.rp's buffer, when it has one).
func (k *call) open(x *exchange, creq *C.prefork_request, cresp *C.prefork_response, cx *C.goprefork_exchange) {
	x.req.k, x.resp.k = k, k
	k.req, k.resp = &x.req, &x.resp
	k.c, k.rc, k.x = creq, cresp, cx
	k.ends, k.n = false, -1
	if k.rp != nil {
		cx.fields, k.n = k.rp.buf, 0
	}
}

// run runs the handler on k's request, then ends its hold on k and tells whether the response
// ends its batch. A Response deferred meanwhile has moved to a call of its own.
func (s *server) run(k *call) bool {
	s.p.handler(k.req, k.resp)
	return k.close()
}

// close ends the hold of k's Request and Response on it: from now on they read empty.
// Returns whether the response ends its batch.
func (k *call) close() bool {
	k.req, k.resp = nil, nil
	return k.ends
}

// recovered answers 500 for the request in k whose handler panicked with v. What was staged
// is taken back; what reached the library is replaced or stays.
func (s *server) recovered(v any, k *call) {
	x := k.x
	s.logf("ERROR", "panic serving %s %s: %v\n%s", view(x.method), view(x.target), v, debug.Stack())
	k.close()
	x.stage_len, x.fields_len, x.status = 0, 0, 0
	internalError(k.rc)
}
