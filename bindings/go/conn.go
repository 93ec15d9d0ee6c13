package prefork

// #include "shim.h"
import "C"

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// hijackedConn is the net.Conn Hijack returns: the runtime's own copy of the socket, the bytes
// the library had read past the request, and the library's handle, which counts the
// connection toward MaxConnections until Close releases it.
type hijackedConn struct {
	net.Conn
	mu       sync.Mutex
	leftover []byte
	c        *C.prefork_conn
	once     sync.Once
}

// newHijackedConn wraps the library's connection; on error the caller still owns it.
func newHijackedConn(c *C.prefork_conn) (*hijackedConn, error) {
	// net.FileConn duplicates the descriptor into the runtime's poller, and the os.File it
	// reads from would close its own: hand it a duplicate, so the library's stays the
	// library's to close.
	fd := int(C.prefork_conn_fd(c))
	nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return nil, fmt.Errorf("prefork: Hijack: dup descriptor %d: %w", fd, errno)
	}
	f := os.NewFile(nfd, "prefork-hijacked")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("prefork: Hijack: %w", err)
	}
	left := C.prefork_conn_leftover(c)
	return &hijackedConn{
		Conn:     nc,
		leftover: C.GoBytes(unsafe.Pointer(left.ptr), C.int(left.len)),
		c:        c,
	}, nil
}

// Read returns the bytes read past the request first, then reads the socket.
func (h *hijackedConn) Read(p []byte) (int, error) {
	h.mu.Lock()
	if len(h.leftover) > 0 {
		n := copy(p, h.leftover)
		h.leftover = h.leftover[n:]
		h.mu.Unlock()
		return n, nil
	}
	h.mu.Unlock()
	return h.Conn.Read(p)
}

// Close closes the connection and frees its place under MaxConnections.
func (h *hijackedConn) Close() error {
	err := h.Conn.Close()
	h.once.Do(func() { C.prefork_conn_close(h.c) })
	return err
}
