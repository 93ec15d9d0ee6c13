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
	fmt.Fprintf(conn, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if _, err := fmt.Sscanf(body, "%d %d", &mallocs, &cgoCalls); err != nil {
		t.Fatalf("GET /stats = %q: %v", body, err)
	}
	return mallocs, cgoCalls
}

// A request to a handler that adds a field and writes a short body costs the child no Go
// allocation (but the exchange slab, one per 64 requests) and no call from Go into C: the
// callback is its only crossing. Counts, unlike times, do not depend on the machine's load.
func TestHotPathAllocatesNothingAndCallsNoC(t *testing.T) {
	const batch, batches = 64, 50
	m := startMaster(t, envChildren+"=1")
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(m.port), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitBound))
	r := bufio.NewReader(conn)
	requests := strings.Repeat("GET / HTTP/1.1\r\nHost: x\r\n\r\n", batch)
	run := func(n int) {
		for range n {
			io.WriteString(conn, requests)
			for range batch {
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatal(err)
				}
				if body := readBody(t, resp); resp.StatusCode != 200 || body != "hello" {
					t.Fatalf("GET / = %d %q", resp.StatusCode, body)
				}
			}
		}
	}
	run(2) // the child's first slab, replay's fields, the runtime's own start
	mallocs0, calls0 := stats(t, conn, r)
	run(batches)
	mallocs1, calls1 := stats(t, conn, r)
	n := batch * batches
	// One slab per 64 exchanges (requests), and the one /stats allocates; a few for the
	// runtime's own work (a slab boundary falls anywhere, so one more).
	if got, limit := mallocs1-mallocs0, int64(n/64+4); got > limit {
		t.Errorf("%d requests allocated %d times in the child (%.3f per request), want at most %d",
			n, got, float64(got)/float64(n), limit)
	}
	if got := calls1 - calls0; got != 0 {
		t.Errorf("%d requests made %d calls from Go into C (%.3f per request), want none", n, got, float64(got)/float64(n))
	}
	t.Logf("%d requests: %d allocations, %d calls from Go into C", n, mallocs1-mallocs0, calls1-calls0)
	m.stop()
}
