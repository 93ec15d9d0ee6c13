// tlsload: the TLS client of the libprefork benchmark's TLS scenarios (bench/harness/tls.py).
// wrk measures keep-alive requests over TLS; what wrk cannot do is here:
//
//	tlsload rate -addr A -seconds S -workers W [-resume]   new connection per request
//	                                                       (-plain: without TLS, for its floor)
//	tlsload reconnect -addr A -n N                         one client resuming N times
//	tlsload hold -addr A -n N                              N idle TLS keep-alive connections
//
// Every connection is TLS 1.3 (or -tls12) with one key-exchange group (-group, X25519 by
// default: the group that OpenSSL, browsers and Go chose before the post-quantum hybrids, so
// that every server computes the same key exchange). Certificates are not verified: the
// handshake signature still is (crypto/tls checks CertificateVerify), and the harness
// generated the certificate itself. Each mode prints one JSON object on stdout.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	addr    string
	group   string
	tls12   bool
	plain   bool
	timeout time.Duration
}

func (o *options) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8443", "server address (loopback)")
	fs.StringVar(&o.group, "group", "x25519", "key exchange: x25519, p256 or x25519mlkem768")
	fs.BoolVar(&o.tls12, "tls12", false, "TLS 1.2 instead of 1.3")
	fs.BoolVar(&o.plain, "plain", false, "plain HTTP (rate only): the cost of a connection without TLS")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "per connection: dial, handshake and response")
}

func (o *options) config(cache tls.ClientSessionCache) (*tls.Config, error) {
	groups := map[string]tls.CurveID{
		"x25519":         tls.X25519,
		"p256":           tls.CurveP256,
		"x25519mlkem768": tls.X25519MLKEM768,
	}
	g, ok := groups[o.group]
	if !ok {
		return nil, fmt.Errorf("unknown group %q", o.group)
	}
	c := &tls.Config{
		InsecureSkipVerify: true,
		CurvePreferences:   []tls.CurveID{g},
		MinVersion:         tls.VersionTLS13,
		MaxVersion:         tls.VersionTLS13,
		NextProtos:         []string{"http/1.1"},
		ClientSessionCache: cache,
		ServerName:         "localhost",
	}
	if o.tls12 {
		c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	}
	return c, nil
}

// exchange: one GET on a TLS connection, the body read whole.
func exchange(c net.Conn, br *bufio.Reader, path string) (string, error) {
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(body), nil
}

// once: a new connection, its handshake and one GET, then close. In TLS 1.3 the ticket
// arrives after the handshake, so the response is read before the close: the cache has it.
func once(o *options, cfg *tls.Config, path string) (resumed bool, body string, err error) {
	d := net.Dialer{Timeout: o.timeout}
	raw, err := d.Dial("tcp", o.addr)
	if err != nil {
		return false, "", err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(o.timeout))
	if o.plain {
		body, err = exchange(raw, bufio.NewReader(raw), path)
		return false, body, err
	}
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		return false, "", err
	}
	body, err = exchange(c, bufio.NewReader(c), path)
	resumed = c.ConnectionState().DidResume
	c.Close()
	return resumed, body, err
}

type rateResult struct {
	Handshakes int64   `json:"handshakes"`
	Resumed    int64   `json:"resumed"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"handshakes_per_s"`
}

// rate: workers loop on once() until the time is up. With -resume each worker keeps its own
// session cache, as separate clients would, so its first handshake is full and the others
// present its latest ticket.
func rate(args []string) error {
	fs := flag.NewFlagSet("rate", flag.ExitOnError)
	var o options
	o.flags(fs)
	seconds := fs.Float64("seconds", 5, "duration")
	workers := fs.Int("workers", 16, "concurrent connections")
	resume := fs.Bool("resume", false, "resume with the last ticket the worker got")
	fs.Parse(args)
	var res rateResult
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(time.Duration(*seconds * float64(time.Second)))
	for i := 0; i < *workers; i++ {
		var cache tls.ClientSessionCache
		if *resume {
			cache = tls.NewLRUClientSessionCache(1)
		}
		cfg, err := o.config(cache)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				resumed, _, err := once(&o, cfg, "/")
				if err != nil {
					atomic.AddInt64(&res.Errors, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				atomic.AddInt64(&res.Handshakes, 1)
				if resumed {
					atomic.AddInt64(&res.Resumed, 1)
				}
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Rate = float64(res.Handshakes) / res.Seconds
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	return emit(res)
}

type reconnectResult struct {
	Reconnects int            `json:"reconnects"`
	Resumed    int            `json:"resumed"`
	Errors     int            `json:"errors"`
	FirstError string         `json:"first_error,omitempty"`
	Children   map[string]int `json:"children"` // serving pid -> reconnects it answered
}

// reconnect: one client (one session cache) connects once for a ticket, then reconnects n
// times, one after the other, each asking GET /pid: which child answered, and whether the
// handshake resumed.
func reconnect(args []string) error {
	fs := flag.NewFlagSet("reconnect", flag.ExitOnError)
	var o options
	o.flags(fs)
	n := fs.Int("n", 200, "reconnects after the first connection")
	fs.Parse(args)
	cfg, err := o.config(tls.NewLRUClientSessionCache(1))
	if err != nil {
		return err
	}
	if _, _, err := once(&o, cfg, "/pid"); err != nil {
		return fmt.Errorf("first connection: %w", err)
	}
	res := reconnectResult{Reconnects: *n, Children: map[string]int{}}
	for i := 0; i < *n; i++ {
		resumed, pid, err := once(&o, cfg, "/pid")
		if err != nil {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = err.Error()
			}
			continue
		}
		res.Children[pid]++
		if resumed {
			res.Resumed++
		}
	}
	return emit(res)
}

type holdResult struct {
	Held       int    `json:"held"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error,omitempty"`
}

// hold: opens n connections (64 handshakes at a time), each after one GET /, keeps them, prints
// {"held":..}, and then waits on stdin: a "check" line counts the connections the server has
// closed ({"closed":..}); EOF closes everything and exits.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	var o options
	o.flags(fs)
	n := fs.Int("n", 10000, "connections")
	parallel := fs.Int("parallel", 64, "handshakes under way at once")
	fs.Parse(args)
	cfg, err := o.config(nil)
	if err != nil {
		return err
	}
	conns := make([]*tls.Conn, 0, *n)
	var mu sync.Mutex
	var res holdResult
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	for i := 0; i < *n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := openIdle(&o, cfg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				if res.FirstError == "" {
					res.FirstError = err.Error()
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	res.Held = len(conns)
	if err := emit(res); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "check" {
			if err := emit(map[string]int{"closed": countClosed(conns)}); err != nil {
				return err
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
	return nil
}

func openIdle(o *options, cfg *tls.Config) (*tls.Conn, error) {
	d := net.Dialer{Timeout: o.timeout}
	raw, err := d.Dial("tcp", o.addr)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(o.timeout))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err == nil {
		if _, err = exchange(c, bufio.NewReader(c), "/"); err == nil {
			raw.SetDeadline(time.Time{})
			return c, nil
		}
	}
	raw.Close()
	return nil, err
}

// countClosed: a connection the server closed reads EOF (or an error) at once; an open idle
// one times out. Reads go to the TLS layer, so a late ticket message is consumed, not counted.
func countClosed(conns []*tls.Conn) int {
	closed := 0
	buf := make([]byte, 1)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(buf)
		var ne net.Error
		if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
			closed++
		}
	}
	return closed
}

func emit(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(b))
	return err
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tlsload rate|reconnect|hold [flags]")
		os.Exit(2)
	}
	modes := map[string]func([]string) error{"rate": rate, "reconnect": reconnect, "hold": hold}
	f, ok := modes[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "tlsload: unknown mode %s\n", strconv.Quote(os.Args[1]))
		os.Exit(2)
	}
	if err := f(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "tlsload %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
