package prefork

import "unsafe"

// LiveHandles is the number of cgo handles the library still holds: 0 once every
// ListenAndServe has returned, if the finalizers released them.
func LiveHandles() int64 { return liveHandles.Load() }

// NewExchange is a fresh exchange, as each request gets one.
func NewExchange() unsafe.Pointer { return unsafe.Pointer(newExchange()) }

// Stageable reports whether AddHeader stages the field rather than handing it to the library.
func Stageable(name, value string) bool { return stageable(name, value) }

// AddHeaderDirect adds the field as AddHeader does when it cannot stage it: the library
// checks it at once.
func AddHeaderDirect(r *Response, name, value string) error {
	k, err := r.live("AddHeader")
	if err != nil {
		return err
	}
	return k.addHeaderDirect(name, value)
}
