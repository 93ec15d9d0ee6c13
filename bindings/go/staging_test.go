package prefork_test

// The response is staged in the C callback's buffers and handed to the library after the
// handler (see response.go): these tests hold the staging to what the library would have done
// with each call at once, and count what a request costs the child.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawResponse is a response as it came: the status code, the header fields in order ("Name:
// value", without those the library adds to every response), the body.
type rawResponse struct {
	status int
	fields []string
	body   string
}

// rawGet sends GET target on its own connection and reads the answer in order.
func rawGet(t *testing.T, addr, target string) rawResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitBound))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", target)
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	var got rawResponse
	fmt.Sscanf(line, "HTTP/1.1 %d", &got.status)
	length := -1
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("GET %s: the head: %v", target, err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		name, value, _ := strings.Cut(line, ": ")
		switch strings.ToLower(name) {
		case "content-length":
			length, _ = strconv.Atoi(value)
		case "date", "connection":
		default:
			got.fields = append(got.fields, line)
		}
	}
	body, err := io.ReadAll(r)
	if err != nil || (length >= 0 && len(body) != length) {
		t.Fatalf("GET %s: a %d-byte body, Content-Length %d: %v", target, len(body), length, err)
	}
	got.body = string(body)
	return got
}

func fieldsQuery(fields ...string) string {
	q := url.Values{"f": fields}
	return q.Encode()
}

// Fields reach the client in the order they were added, whether staged, handed over at once
// (a value longer than the buffer, a name the library owns) or refused, with the status and
// body of the staging buffer: on the event loop (fields staged in the buffer kept across
// requests) and on handler threads (each callback's own).
func TestStagedFieldsKeepTheirOrder(t *testing.T) {
	long := "X-Long: " + strings.Repeat("v", 1500)
	cases := []struct {
		query  string
		status int
		fields []string
		body   string
	}{
		{fieldsQuery("X-A:1", "X-B:2"), 200, []string{"X-A: 1", "X-B: 2"}, ""},
		// The first field is the Content-Type: one prefork_response_reply with the status.
		{"status=201&body=made&" + fieldsQuery("Content-Type:text/x", "X-A:1"), 201,
			[]string{"Content-Type: text/x", "X-A: 1"}, "made"},
		{"status=404&" + fieldsQuery("X-A:1", "Content-Type:text/x"), 404,
			[]string{"X-A: 1", "Content-Type: text/x"}, ""},
		{fieldsQuery("content-type:text/x"), 200, []string{"content-type: text/x"}, ""},
		{fieldsQuery("X-A:1", "X-Long:long", "X-B:2", "X-Long:long", "X-C:3"), 200,
			[]string{"X-A: 1", long, "X-B: 2", long, "X-C: 3"}, ""},
		{fieldsQuery("X-A:1", "Bad Name:x", "X-B:2", "Content-Length:5", "X-C:3"), 200,
			[]string{"X-A: 1", "X-B: 2", "X-C: 3"}, "refused Bad Name\nrefused Content-Length\n"},
		{fieldsQuery("X-A:1", "Connection:keep-alive", "X-B:2"), 200, []string{"X-A: 1", "X-B: 2"}, ""},
		{fieldsQuery("X-A:  padded\t"), 200, []string{"X-A: padded"}, ""},
	}
	for _, threads := range []string{"0", "2"} {
		t.Run("threads="+threads, func(t *testing.T) {
			m := startMaster(t, envChildren+"=1", envThreads+"="+threads)
			addr := "127.0.0.1:" + strconv.Itoa(m.port)
			for _, c := range cases {
				got := rawGet(t, addr, "/fields?"+c.query)
				if got.status != c.status || strings.Join(got.fields, "\n") != strings.Join(c.fields, "\n") || got.body != c.body {
					t.Errorf("GET /fields?%s = %d %q %q, want %d %q %q",
						c.query, got.status, got.fields, got.body, c.status, c.fields, c.body)
				}
			}
			// The same strings on every request: the event loop replays the fields the
			// request before staged. Fewer, more and then other fields must each be exact.
			constant := []string{"Content-Type: text/plain", "X-One: 1", "Cache-Control: no-store"}
			for _, n := range []int{3, 3, 1, 2, 3, 0, 2, 3} {
				got := rawGet(t, addr, fmt.Sprintf("/constfields?n=%d", n))
				if got.status != 200 || strings.Join(got.fields, "\n") != strings.Join(constant[:n], "\n") || got.body != "const" {
					t.Errorf("GET /constfields?n=%d = %d %q %q, want the first %d of %q", n, got.status, got.fields, got.body, n, constant)
				}
				if n == 2 {
					// Other fields in between: what the buffer held is overwritten.
					if got := rawGet(t, addr, "/fields?"+fieldsQuery("X-Z:26")); strings.Join(got.fields, ",") != "X-Z: 26" {
						t.Errorf("GET /fields?f=X-Z:26 = %q", got.fields)
					}
				}
				if n == 3 {
					// A field handed over at once, then one staged over the buffer's start:
					// the next request must not take those bytes for its own fields.
					want := []string{"X-Long: " + strings.Repeat("v", 1500), "X-Z: 26"}
					if got := rawGet(t, addr, "/fields?"+fieldsQuery("X-Long:long", "X-Z:26")); strings.Join(got.fields, "\n") != strings.Join(want, "\n") {
						t.Errorf("GET /fields?f=X-Long:long&f=X-Z:26 = %q", got.fields)
					}
				}
			}
			// A panicking handler's staged fields are taken back.
			if got := rawGet(t, addr, "/panic"); got.status != 500 || len(got.fields) != 0 {
				t.Errorf("GET /panic = %d %q, want 500 without the handler's staged fields", got.status, got.fields)
			}
			m.stop()
		})
	}
}

// AddHeader stages a field (and adds it later, unchecked) only when the library would accept
// it: its check and the library's must agree on every byte.
func TestStagedFieldsAreWhatTheLibraryAccepts(t *testing.T) {
	m := startMaster(t, envChildren+"=1")
	code, body := get(t, m.url("/stagecheck"))
	if code != 200 || body != "" {
		t.Fatalf("GET /stagecheck = %d, where AddHeader and the library disagree:\n%s", code, body)
	}
	m.stop()
}

// stats reads the child's allocation and Go-to-C call counters over conn.
func stats(t *testing.T, conn net.Conn, r *bufio.Reader) (mallocs, cgoCalls int64) {
	t.Helper()
	fmt.Fprintf(conn, "GET /counters HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if _, err := fmt.Sscanf(body, "%d %d", &mallocs, &cgoCalls); err != nil {
		t.Fatalf("GET /counters = %q: %v", body, err)
	}
	return mallocs, cgoCalls
}

// perRequest sends batches of `request` (pipelined, `batch` per write) to m's child and
// returns the allocations and Go-to-C calls it made per request, by the child's own counters
// (GET /counters, which the test handler and the chi router both serve).
func perRequest(t *testing.T, m *master, request, body string, batch, batches int) (allocs, cgoCalls float64) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(m.port), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitBound))
	r := bufio.NewReader(conn)
	requests := strings.Repeat(request, batch)
	run := func(n int) {
		for range n {
			io.WriteString(conn, requests)
			for range batch {
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got := readBody(t, resp); resp.StatusCode != 200 || got != body {
					t.Fatalf("%q: %d %q, want 200 %q", request, resp.StatusCode, got, body)
				}
			}
		}
	}
	run(2) // the child's first slab, replay's fields, the runtime's own start
	mallocs0, calls0 := stats(t, conn, r)
	run(batches)
	mallocs1, calls1 := stats(t, conn, r)
	n := float64(batch * batches)
	return float64(mallocs1-mallocs0) / n, float64(calls1-calls0) / n
}

// A request to a handler that adds a field and writes a short body costs the child no Go
// allocation (but the exchange slab, one per 64 requests) and no call from Go into C: the
// callback is its only crossing. Counts, unlike times, do not depend on the machine's load.
func TestHotPathAllocatesNothingAndCallsNoC(t *testing.T) {
	const batch, batches = 64, 50
	m := startMaster(t, envChildren+"=1")
	allocs, calls := perRequest(t, m, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "hello", batch, batches)
	// One slab per 64 exchanges (requests), and the one /counters allocates; a few for the
	// runtime's own work (a slab boundary falls anywhere, so one more).
	if limit := (float64(batch*batches)/64 + 4) / float64(batch*batches); allocs > limit {
		t.Errorf("%.3f allocations per request in the child, want at most %.3f (the exchange slab)", allocs, limit)
	}
	if calls != 0 {
		t.Errorf("%.3f calls from Go into C per request, want none", calls)
	}
	t.Logf("per request: %.4f allocations, %.3f calls from Go into C", allocs, calls)
	m.stop()
}

// What a request costs through HTTPHandler, with a chi router: one call into C (for the
// headers, body and address) and 10 allocations for a small GET, 11 with a browser's 8
// fields: the exchange; one string for the target and every header value; the header map
// (2); the net/http request WithContext copies; the writer's header map (2); chi's WithValue
// and its request copy; the handler's Header().Set. net/http alone serving the same router
// allocates 19 and 27 (server and a raw client in one process, 3,200 pipelined requests). The
// bounds hold the adapter to that: a change that allocates more per request fails here first.
func TestHTTPHandlerAllocations(t *testing.T) {
	m := startMaster(t, envChi+"=1", envChildren+"=1")
	small := "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
	browser := "GET /hello?fields=name,email&id=12345 HTTP/1.1\r\nHost: example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\nAccept: text/html,*/*;q=0.8\r\n" +
		"Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n" +
		"Cookie: session=abcdef0123456789; theme=dark\r\nCache-Control: max-age=0\r\n\r\n"
	for _, c := range []struct {
		name, request string
		maxAllocs     float64
	}{{"small", small, 10.5}, {"browser", browser, 11.5}} {
		allocs, calls := perRequest(t, m, c.request, "Hello, World!", 16, 20)
		t.Logf("%s GET: %.2f allocations and %.2f calls from Go into C per request", c.name, allocs, calls)
		if allocs > c.maxAllocs || calls > 1.01 { // /counters itself is one more
			t.Errorf("%s GET: %.2f allocations and %.2f calls into C per request, want at most %v and 1",
				c.name, allocs, calls, c.maxAllocs)
		}
	}
	m.stop()
}

// RemoteAddr is the client's side of the connection, on every request of a keep-alive
// connection (the event loop keeps the last text) and on a new one; over IPv6 too, where the
// library writes the text.
func TestRemoteAddr(t *testing.T) {
	for _, c := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(c.network, func(t *testing.T) {
			if c.network == "tcp6" {
				ln, err := net.Listen("tcp6", "[::1]:0")
				if err != nil {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				ln.Close()
			}
			m := startMaster(t, envChildren+"=1", envNetwork+"="+c.network, envAddr+"="+c.addr)
			host, _, _ := net.SplitHostPort(c.addr)
			for range 2 {
				conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(m.port)), waitBound)
				if err != nil {
					t.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(waitBound))
				r := bufio.NewReader(conn)
				for range 3 {
					fmt.Fprintf(conn, "GET /remote HTTP/1.1\r\nHost: x\r\n\r\n")
					resp, err := http.ReadResponse(r, nil)
					if err != nil {
						t.Fatal(err)
					}
					if got, want := readBody(t, resp), conn.LocalAddr().String(); got != want {
						t.Errorf("RemoteAddr() = %q, want the client's %q", got, want)
					}
				}
				conn.Close()
			}
			m.stop()
		})
	}
}
