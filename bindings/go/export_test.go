package prefork

import "unsafe"

// LiveHandles is the number of cgo handles the library still holds: 0 once every
// ListenAndServe has returned, if the finalizers released them.
func LiveHandles() int64 { return liveHandles.Load() }

// NewExchange is a fresh exchange, as each request gets one.
func NewExchange() unsafe.Pointer { return unsafe.Pointer(newExchange()) }
