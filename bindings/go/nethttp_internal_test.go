package prefork

import (
	"net/textproto"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// canonicalKey's table and its fallback key the header map as net/http does.
func TestCanonicalKeyIsNetHTTPs(t *testing.T) {
	names := []string{"x", "X-Custom-Thing", "x_under", "Bad Name", "ÿ-high", strings.Repeat("long-", 8)}
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language",
		"Authorization", "Cache-Control", "Connection", "Content-Encoding", "Content-Length",
		"Content-Type", "Cookie", "Dnt", "Expect", "Forwarded", "Host", "If-Match",
		"If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Origin", "Pragma",
		"Priority", "Range", "Referer", "Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform",
		"Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-User", "Te", "Traceparent",
		"Upgrade", "Upgrade-Insecure-Requests", "User-Agent", "Via", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id", "X-Requested-With"} {
		if commonHeader(strings.ToLower(k)) != k {
			t.Errorf("commonHeader(%q) = %q", strings.ToLower(k), commonHeader(strings.ToLower(k)))
		}
		names = append(names, k, strings.ToLower(k), strings.ToUpper(k))
	}
	for _, n := range names {
		if got, want := canonicalKey([]byte(n)), textproto.CanonicalMIMEHeaderKey(n); got != want {
			t.Errorf("canonicalKey(%q) = %q, want %q", n, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { canonicalKey([]byte("user-AGENT")) }); n != 0 {
		t.Errorf("canonicalKey of a common name allocates %v times", n)
	}
}

// parseTarget's shortcut gives what url.ParseRequestURI gives.
func TestParseTargetIsParseRequestURI(t *testing.T) {
	for _, target := range []string{
		"/", "/a/b", "/a?x=1&y", "/p?", "/p??", "/p?a?", "/a b", "/%41%2f", "/caf%C3%A9?q=%20",
		"/!$&'()*+,;=:@", "/a~b_c-d.e", "//double", "/x#frag", "*", "http://h.example/p?q",
		"http://h.example", "/é", "/a\"b", "/a<b>", "/a{b}", "/a|b", "/a^b", "/a`b", "/a[b]",
	} {
		var x httpExchange
		got, gotErr := x.parseTarget(target)
		want, wantErr := url.ParseRequestURI(target)
		if (gotErr == nil) != (wantErr == nil) || (gotErr == nil && !reflect.DeepEqual(*got, *want)) {
			t.Errorf("parseTarget(%q) = %#v, %v; ParseRequestURI: %#v, %v", target, got, gotErr, want, wantErr)
		}
	}
}
