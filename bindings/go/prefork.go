package prefork

// #include <stdlib.h>
// #include "shim.h"
import "C"

import (
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// ChildEnv is the environment variable (set to "1") that marks a process as a prefork child.
const ChildEnv = "PREFORK_CHILD"

// DefaultRecoverThreshold, the value New gives RecoverThreshold, lets the library choose
// max(1, children/2), as fasthttp's New chooses max(1, GOMAXPROCS/2).
const DefaultRecoverThreshold = -1

// RequestHandler answers one request by reading req and filling resp. It runs in a child
// process: on the child's event-loop thread, or concurrently on HandlerThreads threads when
// that is above zero. req, resp and every view they return are valid only until it returns.
// A panic becomes a 500 response for that request (and closes its connection); the child
// keeps serving.
type RequestHandler func(req *Request, resp *Response)

// Logger receives the library's log lines (process events, warnings, errors) and the
// binding's own (a handler's panic). Its method set is fasthttp's Logger, so a
// *log.Logger or a fasthttp.Logger fits. It is called from the master and from every child,
// from any of their threads, possibly concurrently.
type Logger interface {
	// Printf must have the same semantics as log.Printf.
	Printf(format string, args ...any)
}

// Prefork runs a RequestHandler in preforked child processes: ListenAndServe in the master
// (the program as started) binds the address and re-executes the program once per child;
// the same call in each child serves the inherited listener. Build the Prefork the same way
// in every process: the children are fresh executions of main.
//
// Each option field states its default ("Default: 5s."), what a Prefork from New has. A zero
// field means that default too, except where the field says "Zero is not the default".
// Fields are read when ListenAndServe starts; changing them while it runs has no effect.
//
// WARNING: as with fasthttp prefork, each child is a separate process: global state such as
// an in-memory cache is per child.
type Prefork struct {
	// The "Default:" sentences and what configure does with a zero field are checked against
	// include/prefork.h by tests/go_options.rs.

	// ServeFunc, when set, runs the program's own server in each child instead of the
	// library's HTTP engine, as fasthttp prefork's ServeFunc does: the child calls it, after
	// InitChild, with the listener inherited from the master (a *net.TCPListener), and the
	// master supervises the children as always (readiness, replacement within
	// RecoverThreshold, the grace period, master-death detection, every hook). The child
	// reports ready as ServeFunc is called (the listener queues connections already).
	//
	// ServeFunc must return when Stopping() is closed, once its requests in flight are done:
	// Graceful does that for servers with a Shutdown method, such as net/http's and
	// fasthttp's. At the stop the binding also closes ln, so that a server that ignores
	// Stopping at least stops accepting and returns, dropping what it was serving. When
	// ServeFunc returns, ExitChild runs and the child exits: with status 0 for nil (or, after
	// the stop, an error that only says the listener was closed: net.ErrClosed,
	// http.ErrServerClosed), 1 for another error, which is logged, and 2 for a panic. A
	// ServeFunc that returns before the stop is a child that exited, which the master
	// replaces. In a child, ListenAndServe does not return once ServeFunc was called.
	//
	// The handler given to New is not called (New(nil) will do), and the HTTP options
	// (HandlerThreads, the Max* limits and the timeouts) do not apply.
	ServeFunc func(ln net.Listener) error

	// Logger receives the library's log lines at INFO and above. nil keeps the library's
	// own logger, which writes "prefork[PID] LEVEL: message" lines to stderr.
	Logger Logger

	// Network is "tcp4", "tcp6" or "tcp" (dual stack for an IPv6 or empty host).
	// Default: "tcp4", as in fasthttp; New sets it, and empty means the default too.
	Network string

	// RecoverThreshold is how many crash-loop exits (see RecoverMinUptime; every exit with
	// RecoverEveryExit) are tolerated within RecoverWindow; one more makes ListenAndServe stop
	// the other children and return ErrOverRecovery.
	// Default: -1 (DefaultRecoverThreshold, which New sets), meaning max(1, children/2), as
	// does any negative value. Zero is not the default: 0 gives up at the first exit.
	RecoverThreshold int

	// RecoverInterval is the delay before an exited child is replaced. Default: 0.
	RecoverInterval time.Duration

	// ShutdownGracePeriod is how long children get to finish their requests after a stop
	// request before they are killed. Default: 5s.
	ShutdownGracePeriod time.Duration

	// ShutdownDelay is how long the children keep serving after the master's stop request
	// (SIGTERM, SIGINT, Shutdown), closing every connection after its response and with
	// IsStopping true, before they stop accepting and drain: the time a load balancer needs
	// to take the instance out (its health check can fail on IsStopping). The grace period
	// runs after it: a stop takes at most ShutdownDelay + ShutdownGracePeriod. A second stop
	// request skips the rest of the delay. In a ServeFunc child, Stopping is closed when the
	// delay is over. Default: 0.
	ShutdownDelay time.Duration

	// Reuseport makes the master bind one SO_REUSEPORT socket per child instead of one
	// listener shared by all (the kernel then spreads connections evenly). Default: false.
	Reuseport bool

	// OnMasterDeath runs in a child, at most once, when its master is gone (detected at once
	// through a pipe, not by polling). The child then drains its connections and
	// ListenAndServe returns nil (with a ServeFunc: Stopping is closed right after it).
	// Unlike fasthttp, nil does not disable the detection: children always follow their
	// master.
	OnMasterDeath func()

	// OnChildSpawn runs in the master after each child is started (first or replacement).
	// An error (or a panic) stops the master: ListenAndServe stops and reaps the children
	// and returns an error matching ErrHook and the hook's error.
	OnChildSpawn func(pid int) error

	// OnMasterReady runs in the master once, when every initial child reported that it
	// listens, with their pids in slot order. An error stops the master as above.
	OnMasterReady func(childPIDs []int) error

	// OnReload runs in the master when a reload (SIGHUP or Reload) completed: every child of
	// generation generation (the first children are generation 1) listens, with their pids
	// in slot order, and the previous generation was told to stop gracefully. An error stops
	// the master as above.
	OnReload func(generation uint64, childPIDs []int) error

	// OnReloadFailed runs in the master when the reload to generation failed (one of its
	// children exited or missed the startup timeout before all were ready); reason says
	// which. The previous generation keeps serving.
	OnReloadFailed func(generation uint64, reason string)

	// OnUpgrade runs in the old master when a binary upgrade (SIGUSR2 or Upgrade) completed:
	// the new master newPID, started from the program on disk, has every child ready and
	// serves on the same sockets; oldPID is this process. This master then stops its own
	// children gracefully and ListenAndServe returns nil. The place to point a pid file at
	// newPID (the new master runs its own OnMasterReady). A panic is logged.
	OnUpgrade func(oldPID, newPID int)

	// OnChildRecover runs in the master when an exited child was replaced (after
	// OnChildSpawn for newPID). An error stops the master as above.
	OnChildRecover func(oldPID, newPID int) error

	// OnChildExit runs in the master when a child exited and was reaped, before any
	// replacement, and for each child stopped when the master stops: exitCode is its exit
	// status and sig 0, or exitCode is -1 and sig the signal that killed it.
	OnChildExit func(pid, exitCode int, sig syscall.Signal)

	// CommandProducer, when set, starts each child instead of the default re-execution of the
	// program. files holds the listener and the lifeline: pass them as cmd.ExtraFiles, in
	// this order (they must arrive at descriptors 3 and 4), set ChildEnv=1 in cmd.Env, and
	// return a started command. ChildCommand builds the default one to adjust. The master
	// waits for the process itself: never call cmd.Wait, and leave Stdout and Stderr nil or
	// *os.File (other writers need Wait). The files are closed when the producer returns.
	CommandProducer func(files []*os.File) (*exec.Cmd, error)

	// InitChild runs in each child before it reports ready (the place for per-process state
	// such as connections). An error makes the child exit; the master counts that as a crash.
	InitChild func() error

	// ExitChild runs in each child after it stopped serving (drained).
	ExitChild func()

	// Children is the number of child processes; 0 means one per CPU this process may run on
	// (affinity and cgroup quota respected). At most 1024. Default: 0.
	Children int

	// Backlog is the listen(2) backlog (the kernel caps it at net.core.somaxconn).
	// Default: 1024.
	Backlog int

	// RecoverWindow is the sliding window in which child exits count against
	// RecoverThreshold. Default: 60s. Zero means the default (unlike the C setter's 0); a
	// negative value counts exits over the master's whole life (fasthttp's behaviour).
	RecoverWindow time.Duration

	// RecoverBackoffMax caps the exponential backoff between replacements of children that
	// keep dying right after they start. Default: 10s. Zero means the default (unlike the C
	// setter's 0); a negative value means no backoff.
	RecoverBackoffMax time.Duration

	// RecoverMinUptime is how long a child must have served, from its report that it
	// listens, for its exit not to count against RecoverThreshold: a child that exits sooner,
	// or before it is ready, is taken for a crash loop; one that served longer (a request that
	// hit a bug) is always replaced. Default: 1s. Zero means the default (unlike the C
	// setter's 0); a negative value counts only children that never became ready.
	RecoverMinUptime time.Duration

	// RecoverEveryExit counts every child exit against RecoverThreshold, however long the
	// child served: fasthttp's rule (with a negative RecoverWindow, over the master's whole
	// life, exactly as fasthttp). Default: false.
	RecoverEveryExit bool

	// StartupTimeout is how long a child may take to report that it listens (InitChild
	// included). Default: 10s.
	StartupTimeout time.Duration

	// User is the user every child runs as (a name from the user database), with its groups,
	// set before the child's program starts, as nginx's user directive does: the master must
	// run as root, and keeps root only to bind, spawn and signal. An unknown name or a
	// non-root master makes ListenAndServe fail before any child starts. A CommandProducer
	// must start children with that identity itself. Default: "" (the master's user).
	User string

	// Group is the group every child runs as, instead of User's primary group. Default: ""
	// (User's primary group, or the master's).
	Group string

	// CPUAffinity pins child i to the i-th CPU the master may run on (wrapping around); a
	// replacement gets its slot's CPU. Default: false.
	CPUAffinity bool

	// ChildTimeout is the hung-child watchdog: a ready child whose event loop has not turned
	// for this long (a handler blocking it) gets SIGABRT (a goroutine dump), then SIGKILL a
	// second later, and is replaced; at least 100ms when set. Default: 0 (off).
	ChildTimeout time.Duration

	// MaxRequests recycles a child that has received this many requests: a replacement
	// starts, and once it listens the old child stops gracefully, one child at a time.
	// Default: 0 (off).
	MaxRequests int

	// MaxRequestsJitter adds a random 0 to MaxRequestsJitter to each child's MaxRequests, so
	// children started together do not recycle together. Default: 0.
	MaxRequestsJitter int

	// MaxChildAge recycles a child that has been ready for this long, as MaxRequests.
	// Default: 0 (off).
	MaxChildAge time.Duration

	// HandlerThreads is the number of threads per child that run the handler: 0 runs it on
	// the child's event loop (best for handlers that never block); above 0 the handler runs
	// concurrently on that many threads and must be safe for concurrent use. At most 4096.
	// Default: 0.
	HandlerThreads int

	// MaxRequestLine is the longest request line before the reply is 414 (501 when the
	// method alone is too long: over 32 bytes or over this cap); at most MaxHeadSize.
	// Default: 8 KiB.
	MaxRequestLine int
	// MaxHeadSize is the largest request head before the reply is 431. Default: 16 KiB.
	MaxHeadSize int
	// MaxHeaders is the most header fields in a request before the reply is 431.
	// Default: 100.
	MaxHeaders int
	// MaxBodySize is the largest request body; a larger one gets 413. Default: 4 MiB. Zero
	// means the default (unlike the C setter's 0); a negative value refuses every body.
	MaxBodySize int
	// MaxChunkExtSize is the total size of chunk extensions accepted in one chunked request
	// body before the reply is 400. Default: 16 KiB.
	MaxChunkExtSize int
	// MaxTrailerSize is the largest trailer section of a chunked request body before the
	// reply is 431. Default: 16 KiB.
	MaxTrailerSize int
	// MaxBytesPerTurn is how many bytes one connection may read and write in one event-loop
	// turn before the child serves its other connections (fairness). Default: 256 KiB.
	MaxBytesPerTurn int
	// MaxConnections is the number of open connections per child above which it stops
	// accepting until one closes. Default: 16384.
	MaxConnections int
	// MaxOutputBuffer is the output buffered for one connection before the child stops
	// reading from it (backpressure on pipelining clients). Default: 256 KiB.
	MaxOutputBuffer int

	// HeaderTimeout is the time allowed to receive a whole request head. Default: 10s.
	HeaderTimeout time.Duration
	// BodyTimeout is the longest silence while a request body is received. Default: 30s.
	BodyTimeout time.Duration
	// IdleTimeout is how long an idle keep-alive connection is kept. Default: 60s.
	IdleTimeout time.Duration
	// WriteTimeout is the longest time a pending response may make no write progress.
	// Default: 30s.
	WriteTimeout time.Duration

	// MinBodyRate is the slowest request body accepted, in bytes per second: a body must
	// bring at least MinBodyRate × MinRateWindow bytes in every such window, or the reply is
	// 408 (a slow-body attack otherwise holds a connection with a byte per BodyTimeout).
	// Default: 64. Zero means the default (unlike the C setter's 0); a negative value means
	// no minimum.
	MinBodyRate int
	// MinWriteRate is the slowest response write accepted, in bytes per second over
	// MinRateWindow, while output waits for the client to read it; a slower client is
	// disconnected with a reset (a slow-read attack otherwise holds a connection with a byte
	// per WriteTimeout). Default: 64. Zero means the default (unlike the C setter's 0); a negative
	// value means no minimum.
	MinWriteRate int
	// MinRateWindow is the window over which MinBodyRate and MinWriteRate are measured.
	// Default: 10s.
	MinRateWindow time.Duration

	// ProxyProtocol makes every connection start with a PROXY protocol header, version 1 or 2,
	// as a load balancer in front sends it (HAProxy's send-proxy-v2, nginx stream's
	// proxy_protocol on): Request.RemoteAddr is then the client's address from the header and
	// Request.ProxyTLV reads its TLVs. The header is required, never guessed: a connection from
	// outside ProxyAllow, or without a valid header within ProxyTimeout, is closed without a
	// response. Turn it on only where every client is such a balancer. Default: false.
	ProxyProtocol bool
	// ProxyAllow is the comma-separated list of networks (CIDRs such as "10.0.0.0/8,
	// 2001:db8::/32"; "0.0.0.0/0,::/0" allows every source) that PROXY protocol connections
	// may come from; others are closed before anything is read.
	// Default: "127.0.0.0/8,::1/128"; empty means the default too.
	ProxyAllow string
	// ProxyTimeout is how long a new connection may take to send its whole PROXY protocol
	// header. Default: 5s.
	ProxyTimeout time.Duration

	// Listeners are addresses every child serves besides the one given to ListenAndServe
	// (which comes first, and may then be ""), in order: see Listener. With Reuseport each
	// child gets its own socket of every TCP listener; Unix sockets and systemd's are shared.
	// A ServeFunc serves one TCP listener and refuses these. Nil: only ListenAndServe's.
	Listeners []Listener

	handler  RequestHandler
	serving  atomic.Bool
	tlsCerts []tlsCert
}

// Listener is one address of Prefork.Listeners: TCP "host:port" ("[::1]:8080" for IPv6),
// a Unix socket file "unix:/path" (a stale file nobody answers on is replaced, a live one is
// an error; the master removes the file when it stops), an abstract Unix socket "unix:@name",
// or "systemd" for every socket systemd passed (socket activation: LISTEN_FDS and
// LISTEN_PID, an error when they are missing or not this process's).
type Listener struct {
	Addr string
	// ProxyProtocol overrides Prefork.ProxyProtocol for this listener.
	ProxyProtocol ListenerProxy
	// UnixMode is the permission bits of a "unix:/path" socket file (e.g. 0o660), set before
	// it listens; 0 leaves those the umask gives.
	UnixMode os.FileMode
}

// ListenerProxy is a Listener's PROXY protocol setting.
type ListenerProxy int

const (
	// ListenerProxyDefault follows Prefork.ProxyProtocol.
	ListenerProxyDefault ListenerProxy = C.PREFORK_LISTENER_PROXY_DEFAULT
	// ListenerProxyOff: this listener's connections send no PROXY protocol header.
	ListenerProxyOff ListenerProxy = C.PREFORK_LISTENER_PROXY_OFF
	// ListenerProxyOn: every connection of this listener starts with a PROXY protocol header.
	ListenerProxyOn ListenerProxy = C.PREFORK_LISTENER_PROXY_ON
)

// New returns a Prefork serving handler, with Network "tcp4" and RecoverThreshold
// DefaultRecoverThreshold as fasthttp's New; every other field is at its default.
func New(handler RequestHandler) *Prefork {
	return &Prefork{
		Network:          "tcp4",
		RecoverThreshold: DefaultRecoverThreshold,
		handler:          handler,
	}
}

// IsChild reports whether this process is a prefork child (ChildEnv=1 in its environment).
func IsChild() bool {
	return bool(C.prefork_is_child())
}

// IsStopping reports whether this process is stopping: in a child, from the master's
// ShutdownDelay announcement, its stop request or the master's death on; in the master, from
// the stop request on. A health-check handler answers 503 while it is true, so that a
// balancer takes the instance out during the ShutdownDelay while it still serves.
func IsStopping() bool {
	return bool(C.prefork_stopping())
}

// Shutdown asks whatever this process serves to stop gracefully, as SIGTERM does: in the
// master, ListenAndServe stops the children within ShutdownGracePeriod and returns nil; in a
// child, it drains and returns nil. It acts on the process, not on p alone (libprefork runs
// one server per process), may be called from any goroutine, and, when no server runs yet,
// stops the next one as soon as it starts.
func (p *Prefork) Shutdown() {
	C.prefork_shutdown()
}

// Reload asks the master running in this process for a graceful reload, as SIGHUP does: a
// new generation of children (fresh executions of the program, which read their
// configuration again) starts, and once every one of them listens the previous generation
// stops gracefully (OnReload). If the new generation fails before that, the previous one
// keeps serving (OnReloadFailed). A reload asked for while one runs is queued and follows it.
// It reports whether a master was running in this process to take the request; any
// goroutine may call it.
func (p *Prefork) Reload() bool {
	return bool(C.prefork_reload())
}

// Upgrade asks the master running in this process for a zero-downtime binary upgrade, as
// SIGUSR2 does: the program is started again from disk as a new master with the listening
// sockets; once its children listen, the old master stops its own and its ListenAndServe
// returns nil. If the new master fails first, the old one serves on. It reports whether a
// master was running to take the request; any goroutine may call it.
func (p *Prefork) Upgrade() bool {
	return bool(C.prefork_upgrade())
}

// SetChildrenLive asks the master running in this process to serve with n children from now
// on (1 to 1024): added children start as the first ones did, removed ones (the highest
// slots) stop gracefully. It reports whether a master was running to take the request; any
// goroutine may call it. SIGTTIN and SIGTTOU to the master add and remove one child.
func (p *Prefork) SetChildrenLive(n int) bool {
	if n < 1 || n > math.MaxUint32 {
		return false
	}
	return bool(C.prefork_set_children_live(C.uint32_t(n)))
}

// ScaleChildren asks the master running in this process for delta children more (fewer when
// negative), as SIGTTIN (+1) and SIGTTOU (-1) do; it keeps at least one.
func (p *Prefork) ScaleChildren(delta int) bool {
	if delta < math.MinInt32 || delta > math.MaxInt32 {
		return false
	}
	return bool(C.prefork_scale_children(C.int32_t(delta)))
}

// StatsJSON returns the server's figures as JSON (prefork_stats_json): the master's totals
// and, per child, its pid, slot, generation, state, start, requests, open connections and its
// slot's restarts. It works in the master and in any child while ListenAndServe runs (the
// children read the master's figures from memory it shares with them), from any goroutine.
func StatsJSON() (string, error) {
	// The error message is thread-local: read it on the thread that failed.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for size := 1 << 16; ; size *= 4 {
		buf := make([]C.char, size)
		r := C.prefork_stats_json(&buf[0], C.size_t(size))
		if r == C.PREFORK_OK {
			return C.GoString(&buf[0]), nil
		}
		if r != C.PREFORK_ERR_INVALID_ARGUMENT || size > 1<<26 {
			return "", lastError("StatsJSON", r)
		}
	}
}

// Version is the loaded library's version, "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.prefork_version())
}

// LocalAddr returns the address this process serves on ("127.0.0.1:41823") while
// ListenAndServe runs: in the master from the bind on, so hooks such as OnMasterReady learn the
// port chosen for ":0"; in a child from before InitChild. It returns "" otherwise. With
// several listeners it is the first of ListenerAddrs.
func LocalAddr() string {
	var buf [C.PREFORK_ADDR_STRLEN]C.char
	if C.prefork_local_addr(&buf[0], C.size_t(len(buf))) != C.PREFORK_OK {
		return ""
	}
	return C.GoString(&buf[0])
}

// ListenerAddrs returns the address of every listener this process serves, in order (the
// address of ListenAndServe first, then Prefork.Listeners, a "systemd" listener standing for
// each socket passed): "127.0.0.1:41823", "unix:/run/app.sock", "unix:@name". Available as
// LocalAddr is; nil otherwise.
func ListenerAddrs() []string {
	var addrs []string
	var buf [C.PREFORK_ADDR_STRLEN]C.char
	for i := 0; C.prefork_listener_addr(C.size_t(i), &buf[0], C.size_t(len(buf))) == C.PREFORK_OK; i++ {
		addrs = append(addrs, C.GoString(&buf[0]))
	}
	return addrs
}

// ListenAndServe serves HTTP/1.1 on addr ("host:port"; "[::1]:8080" for IPv6; an empty host
// means every interface; or any Listener address: "unix:/path", "unix:@name", "systemd") and
// on Prefork.Listeners; addr may be "" when those are set.
//
// In the master it binds addr, starts the children, runs the hooks and supervises them until
// SIGTERM, SIGINT or Shutdown, then stops them gracefully and returns nil. In a child it
// serves the listener inherited from the master (addr is not used) until told to stop,
// drains and returns nil; the program should then exit. With a ServeFunc, a child calls it
// instead and exits when it returns (see ServeFunc).
//
// While it runs, SIGTERM and SIGINT (and in the master SIGHUP, which reloads, and SIGTTIN
// and SIGTTOU, which add and remove a child, and SIGUSR2, which upgrades the binary) reach
// the
// binding through os/signal (the library's own signal handlers stay off, so the Go runtime
// keeps its signal handling); a child ignores SIGINT and SIGHUP, because a terminal's Ctrl-C
// or hangup reaches the whole process group and the master decides what follows. The relay stops when ListenAndServe returns.
//
// Errors are *Error values that match a sentinel with errors.Is (ErrBind, ErrOverRecovery,
// ErrHook...); a hook's own error is wrapped too.
func (p *Prefork) ListenAndServe(addr string) error {
	return p.serve("ListenAndServe", addr, func(c *C.prefork, caddr *C.char) C.enum_prefork_result {
		return C.prefork_listen_and_serve(c, caddr)
	})
}

// ListenAndServeTLS serves HTTPS (TLS 1.3 and 1.2, ALPN "http/1.1") on addr, as
// ListenAndServe serves HTTP.
//
// NOTE THE ORDER: (addr, certKey, certFile), the KEY file first, then the certificate file,
// exactly as fasthttp prefork's ListenAndServeTLS, so fasthttp code ports by changing the
// import. (The C function prefork_listen_and_serve_tls takes the certificate first.)
//
// certFile is a PEM file with the certificate chain, the server's certificate first; certKey
// is a PEM file with its private key (RSA or ECDSA; PKCS#8, PKCS#1 or SEC1; not encrypted).
// The master reads and checks them, and those of AppendCert, before it binds: an unreadable
// file, no certificate, no key, an encrypted key or a key that does not match its
// certificate is an error matching ErrTLS that names the file, returned before any child is
// started (an expired certificate is only logged). Children get the certificates, keys and
// session-ticket secret from the master over their lifeline and never read the files.
// Every child resumes the TLS sessions of every other child.
//
// Certificates added with AppendCert come first, as in fasthttp: the first of all is the
// default, the others are chosen by the server name the client asks for. certKey and
// certFile may both be "" when AppendCert added at least one.
//
// Serve mode has no TLS: with a ServeFunc, the TLS entry points return an error matching
// ErrState and start nothing (terminate TLS in the ServeFunc's own server instead).
func (p *Prefork) ListenAndServeTLS(addr, certKey, certFile string) error {
	return p.serveTLS("ListenAndServeTLS", addr, tlsCert{certFile: certFile, keyFile: certKey})
}

// ListenAndServeTLSEmbed is ListenAndServeTLS with the PEM text in memory: certData (the
// certificate chain) first, then keyData, as in fasthttp prefork's ListenAndServeTLSEmbed.
func (p *Prefork) ListenAndServeTLSEmbed(addr string, certData, keyData []byte) error {
	return p.serveTLS("ListenAndServeTLSEmbed", addr, tlsCert{certData: certData, keyData: keyData, embed: true})
}

// AppendCert adds a certificate chain and key (PEM files; certificate first, as fasthttp's
// Server.AppendCert) for the TLS entry points: clients asking for one of its DNS names get
// it. The files are read and checked when serving starts; the error is always nil and is
// there for fasthttp's signature.
func (p *Prefork) AppendCert(certFile, keyFile string) error {
	p.tlsCerts = append(p.tlsCerts, tlsCert{certFile: certFile, keyFile: keyFile})
	return nil
}

// AppendCertEmbed is AppendCert with the PEM text in memory (fasthttp's AppendCertEmbed).
func (p *Prefork) AppendCertEmbed(certData, keyData []byte) error {
	p.tlsCerts = append(p.tlsCerts, tlsCert{certData: certData, keyData: keyData, embed: true})
	return nil
}

// tlsCert is one certificate chain and key, as files or as PEM text.
type tlsCert struct {
	certFile, keyFile string
	certData, keyData []byte
	embed             bool
}

func (t tlsCert) empty() bool {
	if t.embed {
		return len(t.certData) == 0 && len(t.keyData) == 0
	}
	return t.certFile == "" && t.keyFile == ""
}

// serveTLS hands the library the first certificate (the default) through the entry point and
// the others through prefork_add_tls_cert, keeping fasthttp's order: appended ones first.
func (p *Prefork) serveTLS(op, addr string, entry tlsCert) error {
	certs := append([]tlsCert(nil), p.tlsCerts...)
	if !entry.empty() || len(certs) == 0 {
		certs = append(certs, entry)
	}
	return p.serve(op, addr, func(c *C.prefork, caddr *C.char) C.enum_prefork_result {
		for _, extra := range certs[1:] {
			if r := extra.add(c); r != C.PREFORK_OK {
				return r
			}
		}
		return certs[0].listen(c, caddr)
	})
}

func (t tlsCert) add(c *C.prefork) C.enum_prefork_result {
	if t.embed {
		cert, key := cBytes(t.certData), cBytes(t.keyData)
		defer C.free(cert)
		defer C.free(key)
		return C.prefork_add_tls_cert_embed(c, cert, C.size_t(len(t.certData)), key, C.size_t(len(t.keyData)))
	}
	cert, key := C.CString(t.certFile), C.CString(t.keyFile)
	defer C.free(unsafe.Pointer(cert))
	defer C.free(unsafe.Pointer(key))
	return C.prefork_add_tls_cert(c, cert, key)
}

func (t tlsCert) listen(c *C.prefork, caddr *C.char) C.enum_prefork_result {
	if t.embed {
		cert, key := cBytes(t.certData), cBytes(t.keyData)
		defer C.free(cert)
		defer C.free(key)
		return C.prefork_listen_and_serve_tls_embed(c, caddr, cert, C.size_t(len(t.certData)), key, C.size_t(len(t.keyData)))
	}
	cert, key := C.CString(t.certFile), C.CString(t.keyFile)
	defer C.free(unsafe.Pointer(cert))
	defer C.free(unsafe.Pointer(key))
	return C.prefork_listen_and_serve_tls(c, caddr, cert, key)
}

// cBytes copies b to C memory (never NULL: C.CBytes of an empty slice still allocates), so no
// Go pointer is held by C while the server runs.
func cBytes(b []byte) unsafe.Pointer {
	return C.CBytes(b)
}

// serve runs one of the library's entry points with the Prefork's options, hooks and logger.
func (p *Prefork) serve(op, addr string, run func(c *C.prefork, caddr *C.char) C.enum_prefork_result) error {
	if p.handler == nil && p.ServeFunc == nil {
		return invalid(op, "the Prefork has neither a handler nor a ServeFunc: create it with New")
	}
	if !p.serving.CompareAndSwap(false, true) {
		return &Error{Op: op, Code: CodeState, Message: "ListenAndServe is already running on this Prefork"}
	}
	defer p.serving.Store(false)

	// prefork_last_error is thread-local, and the child's event loop and the master's hooks
	// run on this thread: keep the goroutine on it from the first call to the last.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	s := &server{p: p}
	if p.HandlerThreads <= 0 && p.ServeFunc == nil {
		// On the event loop, in batches: the fields of a batch's i-th request are staged in a
		// buffer of its own, kept across batches (see replay).
		s.replays = make([]replay, C.GOPREFORK_BATCH)
		s.calls = make([]call, C.GOPREFORK_BATCH)
		for i := range s.replays {
			s.replays[i].buf = (*C.char)(C.malloc(C.GOPREFORK_FIELDS_SIZE))
			defer C.free(unsafe.Pointer(s.replays[i].buf))
			s.calls[i].rp, s.calls[i].srv = &s.replays[i], s
		}
		s.peer = new(peerCache)
	}
	c, err := s.create()
	if err != nil {
		return err
	}
	defer C.prefork_free(c)
	if err := p.configure(c); err != nil {
		return err
	}
	if err := s.install(c); err != nil {
		return err
	}

	caddr := C.CString(addr)
	defer C.free(unsafe.Pointer(caddr))
	child := IsChild()
	stop := relaySignals(child)
	if child && p.ServeFunc == nil {
		defer keepSpareP()()
	}
	r := run(c, caddr)
	stop()
	if r == C.PREFORK_OK {
		return nil
	}
	e := lastError(op, r).(*Error)
	e.Err = s.failure()
	return e
}

// keepSpareP raises GOMAXPROCS from 1 to 2 while a child serves, unless the GOMAXPROCS
// environment variable chose 1, and returns what restores it. The child's event loop is one
// long cgo call. With a single P, the runtime's sysmon takes that P away whenever the loop
// stays in C for a while and wakes a thread to look for other work, which finds none: at
// depth 1 that was 167 context switches per 1,000 requests against the C demo's 130. With an
// idle P beside it, sysmon leaves the loop's P alone: 130.
func keepSpareP() (restore func()) {
	if runtime.GOMAXPROCS(0) != 1 || os.Getenv("GOMAXPROCS") != "" {
		return func() {}
	}
	runtime.GOMAXPROCS(2)
	return func() { runtime.GOMAXPROCS(1) }
}

// server is what the C callbacks reach through their cgo.Handle: the Prefork being served
// and the first error a Go hook returned, which ListenAndServe attaches to its result.
type server struct {
	p *Prefork
	// replays are the staging buffers of the fields kept across requests, one for each place
	// in a batch; nil with handler threads (see replay).
	replays []replay
	// On the event loop: the calls of a batch's places, each with its replay, and the slab
	// its exchanges come from; nil and empty with handler threads.
	calls []call
	slab  loopSlab
	// On the event loop: requests handled, and when the loop's goroutine last yielded (see
	// yield).
	handled uint64
	yielded time.Time
	peer    *peerCache // the last client address, on the event loop; nil with handler threads

	mu      sync.Mutex
	hookErr error
}

func (s *server) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hookErr == nil {
		s.hookErr = err
	}
}

func (s *server) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hookErr
}

// create makes the C handle. Each callback struct gets a handle of its own, deleted by its own
// finalizer, so no finalizer depends on the order in which the library runs them.
func (s *server) create() (*C.prefork, error) {
	var members C.uint
	if s.p.InitChild != nil {
		members |= C.GOPREFORK_INIT_CHILD
	}
	if s.p.ExitChild != nil {
		members |= C.GOPREFORK_EXIT_CHILD
	}
	if s.replays != nil {
		members |= C.GOPREFORK_HANDLE_BATCH
	}
	h := newHandle(s)
	var c *C.prefork
	if r := C.goprefork_new(C.uintptr_t(h), members, &c); r != C.PREFORK_OK {
		deleteHandle(h) // the library took nothing over
		return nil, lastError("create", r)
	}
	return c, nil
}

// install sets the library options the binding owns, the hooks, the ServeFunc and the
// logger.
func (s *server) install(c *C.prefork) error {
	if r := C.prefork_set_handle_signals(c, false); r != C.PREFORK_OK {
		return lastError("set handle_signals", r)
	}
	p := s.p
	var members C.uint
	for _, m := range []struct {
		set bool
		bit C.uint
	}{
		{p.OnChildSpawn != nil, C.GOPREFORK_ON_CHILD_SPAWN},
		{p.OnMasterReady != nil, C.GOPREFORK_ON_MASTER_READY},
		{p.OnChildRecover != nil, C.GOPREFORK_ON_CHILD_RECOVER},
		{p.OnChildExit != nil, C.GOPREFORK_ON_CHILD_EXIT},
		{p.OnMasterDeath != nil, C.GOPREFORK_ON_MASTER_DEATH},
		{p.CommandProducer != nil, C.GOPREFORK_COMMAND_PRODUCER},
		{p.OnReload != nil, C.GOPREFORK_ON_RELOAD},
		{p.OnReloadFailed != nil, C.GOPREFORK_ON_RELOAD_FAILED},
		{p.OnUpgrade != nil, C.GOPREFORK_ON_UPGRADE},
	} {
		if m.set {
			members |= m.bit
		}
	}
	if members != 0 {
		h := newHandle(s)
		if r := C.goprefork_set_hooks(c, C.uintptr_t(h), members); r != C.PREFORK_OK {
			deleteHandle(h)
			return lastError("set hooks", r)
		}
	}
	if p.ServeFunc != nil {
		h := newHandle(s)
		if r := C.goprefork_set_serve(c, C.uintptr_t(h)); r != C.PREFORK_OK {
			deleteHandle(h)
			return lastError("set ServeFunc", r)
		}
	}
	if p.Logger != nil {
		h := newHandle(s)
		if r := C.goprefork_set_logger(c, C.uintptr_t(h)); r != C.PREFORK_OK {
			deleteHandle(h)
			return lastError("set Logger", r)
		}
	}
	return nil
}

// liveHandles counts the cgo handles the library holds, for the tests' leak check.
var liveHandles atomic.Int64

func newHandle(s *server) cgo.Handle {
	liveHandles.Add(1)
	return cgo.NewHandle(s)
}

func deleteHandle(h cgo.Handle) {
	// A deleted handle's number can be handed out again: serverOf must not remember it.
	if c := lastServer.Load(); c != nil && c.h == h {
		lastServer.CompareAndSwap(c, nil)
	}
	h.Delete()
	liveHandles.Add(-1)
}

// configure passes every non-zero option to the library, which validates it.
func (p *Prefork) configure(c *C.prefork) error {
	var err error
	set := func(name string, f func() C.enum_prefork_result) {
		if err == nil {
			err = lastError("set "+name, f())
		}
	}
	// count sets a positive count; zero keeps the default, a negative value is refused.
	count := func(name string, v int, limit uint64, f func(n uint64) C.enum_prefork_result) {
		switch {
		case err != nil || v == 0:
		case v < 0 || uint64(v) > limit:
			err = invalid("set "+name, "%s = %d is out of range", name, v)
		default:
			set(name, func() C.enum_prefork_result { return f(uint64(v)) })
		}
	}
	// duration sets a positive duration in milliseconds (rounded up, so 1ns is not 0);
	// zero keeps the default; a negative one is negative(), or refused when that is nil.
	duration := func(name string, d time.Duration, negative func() C.enum_prefork_result, f func(ms C.uint64_t) C.enum_prefork_result) {
		switch {
		case err != nil || d == 0:
		case d < 0 && negative != nil:
			set(name, negative)
		case d < 0:
			err = invalid("set "+name, "%s = %v is negative", name, d)
		default:
			ms := (d + time.Millisecond - 1) / time.Millisecond
			set(name, func() C.enum_prefork_result { return f(C.uint64_t(ms)) })
		}
	}
	const maxSize = uint64(math.MaxInt)

	count("Children", p.Children, math.MaxUint32, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_children(c, C.uint32_t(n))
	})
	set("Reuseport", func() C.enum_prefork_result { return C.prefork_set_reuseport(c, C.bool(p.Reuseport)) })
	if p.Network != "" {
		set("Network", func() C.enum_prefork_result {
			cs := C.CString(p.Network)
			defer C.free(unsafe.Pointer(cs))
			return C.prefork_set_network(c, cs)
		})
	}
	count("Backlog", p.Backlog, math.MaxInt32, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_backlog(c, C.int32_t(n))
	})
	if err == nil && p.RecoverThreshold > math.MaxInt32 {
		err = invalid("set RecoverThreshold", "RecoverThreshold = %d is out of range", p.RecoverThreshold)
	}
	set("RecoverThreshold", func() C.enum_prefork_result {
		return C.prefork_set_recover_threshold(c, C.int32_t(max(p.RecoverThreshold, -1)))
	})
	duration("RecoverInterval", p.RecoverInterval, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_recover_interval_ms(c, ms)
	})
	duration("RecoverWindow", p.RecoverWindow, func() C.enum_prefork_result {
		return C.prefork_set_recover_window_ms(c, 0)
	}, func(ms C.uint64_t) C.enum_prefork_result { return C.prefork_set_recover_window_ms(c, ms) })
	duration("RecoverBackoffMax", p.RecoverBackoffMax, func() C.enum_prefork_result {
		return C.prefork_set_recover_backoff_max_ms(c, 0)
	}, func(ms C.uint64_t) C.enum_prefork_result { return C.prefork_set_recover_backoff_max_ms(c, ms) })
	duration("RecoverMinUptime", p.RecoverMinUptime, func() C.enum_prefork_result {
		return C.prefork_set_recover_min_uptime_ms(c, 0)
	}, func(ms C.uint64_t) C.enum_prefork_result { return C.prefork_set_recover_min_uptime_ms(c, ms) })
	set("RecoverEveryExit", func() C.enum_prefork_result {
		return C.prefork_set_recover_every_exit(c, C.bool(p.RecoverEveryExit))
	})
	duration("ShutdownGracePeriod", p.ShutdownGracePeriod, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_grace_period_ms(c, ms)
	})
	duration("ShutdownDelay", p.ShutdownDelay, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_shutdown_delay_ms(c, ms)
	})
	duration("StartupTimeout", p.StartupTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_startup_timeout_ms(c, ms)
	})
	if p.User != "" {
		set("User", func() C.enum_prefork_result {
			cs := C.CString(p.User)
			defer C.free(unsafe.Pointer(cs))
			return C.prefork_set_user(c, cs)
		})
	}
	if p.Group != "" {
		set("Group", func() C.enum_prefork_result {
			cs := C.CString(p.Group)
			defer C.free(unsafe.Pointer(cs))
			return C.prefork_set_group(c, cs)
		})
	}
	set("CPUAffinity", func() C.enum_prefork_result { return C.prefork_set_cpu_affinity(c, C.bool(p.CPUAffinity)) })
	count("MaxRequests", p.MaxRequests, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_requests(c, C.uint64_t(n))
	})
	count("MaxRequestsJitter", p.MaxRequestsJitter, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_requests_jitter(c, C.uint64_t(n))
	})
	duration("MaxChildAge", p.MaxChildAge, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_max_child_age_ms(c, ms)
	})
	duration("ChildTimeout", p.ChildTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_child_timeout_ms(c, ms)
	})
	count("HandlerThreads", p.HandlerThreads, math.MaxUint32, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_handler_threads(c, C.uint32_t(n))
	})
	count("MaxRequestLine", p.MaxRequestLine, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_request_line(c, C.size_t(n))
	})
	count("MaxHeadSize", p.MaxHeadSize, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_head_size(c, C.size_t(n))
	})
	count("MaxHeaders", p.MaxHeaders, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_headers(c, C.size_t(n))
	})
	if p.MaxBodySize < 0 {
		set("MaxBodySize", func() C.enum_prefork_result { return C.prefork_set_max_body_size(c, 0) })
	} else {
		count("MaxBodySize", p.MaxBodySize, maxSize, func(n uint64) C.enum_prefork_result {
			return C.prefork_set_max_body_size(c, C.size_t(n))
		})
	}
	count("MaxChunkExtSize", p.MaxChunkExtSize, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_chunk_ext_size(c, C.size_t(n))
	})
	count("MaxTrailerSize", p.MaxTrailerSize, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_trailer_size(c, C.size_t(n))
	})
	count("MaxBytesPerTurn", p.MaxBytesPerTurn, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_bytes_per_turn(c, C.size_t(n))
	})
	count("MaxConnections", p.MaxConnections, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_connections(c, C.size_t(n))
	})
	count("MaxOutputBuffer", p.MaxOutputBuffer, maxSize, func(n uint64) C.enum_prefork_result {
		return C.prefork_set_max_output_buffer(c, C.size_t(n))
	})
	duration("HeaderTimeout", p.HeaderTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_header_timeout_ms(c, ms)
	})
	duration("BodyTimeout", p.BodyTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_body_timeout_ms(c, ms)
	})
	duration("IdleTimeout", p.IdleTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_idle_timeout_ms(c, ms)
	})
	duration("WriteTimeout", p.WriteTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_write_timeout_ms(c, ms)
	})
	if p.MinBodyRate < 0 {
		set("MinBodyRate", func() C.enum_prefork_result { return C.prefork_set_min_body_rate(c, 0) })
	} else {
		count("MinBodyRate", p.MinBodyRate, math.MaxInt64, func(n uint64) C.enum_prefork_result {
			return C.prefork_set_min_body_rate(c, C.uint64_t(n))
		})
	}
	if p.MinWriteRate < 0 {
		set("MinWriteRate", func() C.enum_prefork_result { return C.prefork_set_min_write_rate(c, 0) })
	} else {
		count("MinWriteRate", p.MinWriteRate, math.MaxInt64, func(n uint64) C.enum_prefork_result {
			return C.prefork_set_min_write_rate(c, C.uint64_t(n))
		})
	}
	duration("MinRateWindow", p.MinRateWindow, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_min_rate_window_ms(c, ms)
	})
	set("ProxyProtocol", func() C.enum_prefork_result {
		return C.prefork_set_proxy_protocol(c, C.bool(p.ProxyProtocol))
	})
	if p.ProxyAllow != "" {
		set("ProxyAllow", func() C.enum_prefork_result {
			cs := C.CString(p.ProxyAllow)
			defer C.free(unsafe.Pointer(cs))
			return C.prefork_set_proxy_allow(c, cs)
		})
	}
	duration("ProxyTimeout", p.ProxyTimeout, nil, func(ms C.uint64_t) C.enum_prefork_result {
		return C.prefork_set_proxy_timeout_ms(c, ms)
	})
	for _, l := range p.Listeners {
		set("Listeners", func() C.enum_prefork_result {
			if l.UnixMode&^os.ModePerm != 0 {
				return C.PREFORK_ERR_INVALID_ARGUMENT
			}
			opts := C.prefork_listener_options{
				proxy_protocol: C.int(l.ProxyProtocol),
				unix_mode:      C.uint32_t(l.UnixMode),
			}
			ca := C.CString(l.Addr)
			defer C.free(unsafe.Pointer(ca))
			return C.prefork_add_listener_sized(c, ca, &opts, C.sizeof_prefork_listener_options)
		})
	}
	return err
}

// ChildCommand is the command the master runs for a child by default: this program again,
// with the same arguments, ChildEnv=1 in its environment, files as its ExtraFiles and the
// master's stdout and stderr. A CommandProducer may adjust it before calling Start.
func ChildCommand(files []*os.File) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("prefork: resolve the executable: %w", err)
	}
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		// The marker is set below; only the master speaks to systemd.
		case ChildEnv, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
			"PREFORK_UPGRADE_FDS", "PREFORK_UPGRADE_READY_FD":
		default:
			env = append(env, kv)
		}
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(env, ChildEnv+"=1")
	cmd.ExtraFiles = files
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	return cmd, nil
}
