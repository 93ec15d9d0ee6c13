package prefork

// #include "prefork.h"
import "C"

import (
	"errors"
	"fmt"
	"syscall"
)

// Code is a libprefork result code (prefork_result in prefork.h).
type Code int

// The library's result codes.
const (
	CodeOK              Code = C.PREFORK_OK
	CodeNull            Code = C.PREFORK_ERR_NULL
	CodeInvalidArgument Code = C.PREFORK_ERR_INVALID_ARGUMENT
	CodeState           Code = C.PREFORK_ERR_STATE
	CodeBind            Code = C.PREFORK_ERR_BIND
	CodeSpawn           Code = C.PREFORK_ERR_SPAWN
	CodeStartupTimeout  Code = C.PREFORK_ERR_STARTUP_TIMEOUT
	CodeOverRecovery    Code = C.PREFORK_ERR_OVER_RECOVERY
	CodeHook            Code = C.PREFORK_ERR_HOOK
	CodeIO              Code = C.PREFORK_ERR_IO
	CodePanic           Code = C.PREFORK_ERR_PANIC
	CodeUnsupported     Code = C.PREFORK_ERR_UNSUPPORTED
	CodeTLS             Code = C.PREFORK_ERR_TLS
)

// String is the library's description of the code (prefork_result_str).
func (c Code) String() string {
	return C.GoString(C.prefork_result_str(C.int(c)))
}

// Sentinel errors, one per failure code: every *Error matches the one of its code with
// errors.Is, e.g. errors.Is(err, prefork.ErrOverRecovery).
var (
	ErrNull            = errors.New("prefork: a required pointer was NULL")
	ErrInvalidArgument = errors.New("prefork: invalid argument")
	ErrState           = errors.New("prefork: call not allowed in this state")
	ErrBind            = errors.New("prefork: cannot bind the listen address")
	ErrSpawn           = errors.New("prefork: cannot start a child process")
	ErrStartupTimeout  = errors.New("prefork: a child did not report listening in time")
	ErrOverRecovery    = errors.New("prefork: children exited more often than RecoverThreshold allows")
	ErrHook            = errors.New("prefork: a hook failed")
	ErrIO              = errors.New("prefork: operating-system failure")
	ErrPanic           = errors.New("prefork: panic inside libprefork")
	ErrUnsupported     = errors.New("prefork: not supported on this connection")
	ErrTLS             = errors.New("prefork: unusable TLS certificate or key")
)

var sentinels = map[Code]error{
	CodeNull:            ErrNull,
	CodeInvalidArgument: ErrInvalidArgument,
	CodeState:           ErrState,
	CodeBind:            ErrBind,
	CodeSpawn:           ErrSpawn,
	CodeStartupTimeout:  ErrStartupTimeout,
	CodeOverRecovery:    ErrOverRecovery,
	CodeHook:            ErrHook,
	CodeIO:              ErrIO,
	CodePanic:           ErrPanic,
	CodeUnsupported:     ErrUnsupported,
	CodeTLS:             ErrTLS,
}

// Error is a failure reported by libprefork (or found by the binding before calling it).
type Error struct {
	// Op is the operation that failed, e.g. "ListenAndServe" or "set Backlog".
	Op string
	// Code is the library's result code.
	Code Code
	// Message is the library's prefork_last_error() text, with context.
	Message string
	// Errno is the operating-system error behind the failure (prefork_last_os_error), 0 when
	// there was none: errors.Is(err, syscall.EADDRINUSE) tells a port in use from, say,
	// syscall.EACCES without parsing Message.
	Errno syscall.Errno
	// Err is the Go error behind a CodeHook failure: what a hook returned, or its panic.
	Err error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("prefork: %s: %s", e.Op, e.Code)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrX) true for the sentinel of the error's code, and
// errors.Is(err, syscall.EXXX) true for its Errno.
func (e *Error) Is(target error) bool {
	if errno, ok := target.(syscall.Errno); ok {
		return e.Errno != 0 && e.Errno == errno
	}
	s, ok := sentinels[e.Code]
	return ok && s == target
}

// Unwrap gives the hook's own error, so errors.Is and errors.As reach it too.
func (e *Error) Unwrap() error { return e.Err }

// lastError builds the error of a failed call. It must run on the OS thread that made the
// call: prefork_last_error is thread-local (callers hold runtime.LockOSThread, or run in a
// callback, whose goroutine the runtime keeps on its C thread).
func lastError(op string, r C.enum_prefork_result) error {
	if r == C.PREFORK_OK {
		return nil
	}
	return &Error{
		Op:      op,
		Code:    Code(r),
		Message: C.GoString(C.prefork_last_error()),
		Errno:   syscall.Errno(C.prefork_last_os_error()),
	}
}

func invalid(op, format string, args ...any) error {
	return &Error{Op: op, Code: CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}
