package prefork_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI is a CA and a leaf for 127.0.0.1 and localhost, made by the test (no key is
// checked in), written as PEM files.
type testPKI struct {
	roots             *x509.CertPool
	certFile, keyFile string
	otherKey          string // a key that matches no certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "go binding test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{
		roots:    x509.NewCertPool(),
		certFile: filepath.Join(dir, "leaf.crt"),
		keyFile:  filepath.Join(dir, "leaf.key"),
		otherKey: filepath.Join(dir, "other.key"),
	}
	p.roots.AddCert(ca)
	writePEM(t, p.certFile, "CERTIFICATE", leafDER)
	writeKey(t, p.keyFile, leafKey)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	writeKey(t, p.otherKey, other)
	return p
}

func writeKey(t *testing.T, path string, key *ecdsa.PrivateKey) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der)
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (p *testPKI) clientConfig(cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{RootCAs: p.roots, ServerName: "localhost", ClientSessionCache: cache,
		NextProtos: []string{"http/1.1"}}
}

func TestListenAndServeTLSWithGoClient(t *testing.T) {
	pki := newTestPKI(t)
	for _, embed := range []string{"0", "1"} {
		m := startMaster(t, envChildren+"=2", envTLSCert+"="+pki.certFile,
			envTLSKey+"="+pki.keyFile, envTLSEmbed+"="+embed)
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: pki.clientConfig(nil), DisableKeepAlives: true,
		}}
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/", m.port))
		if err != nil {
			t.Fatalf("embed=%s: GET over TLS: %v\n%s", embed, err, m.transcript())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello" || resp.TLS == nil ||
			resp.TLS.NegotiatedProtocol != "http/1.1" {
			t.Fatalf("embed=%s: %d %q tls=%+v", embed, resp.StatusCode, body, resp.TLS)
		}
		m.stop()
	}
}

func TestTLSSessionsResumeAcrossChildren(t *testing.T) {
	pki := newTestPKI(t)
	m := startMaster(t, envChildren+"=4", envReuseport+"=1", envTLSCert+"="+pki.certFile,
		envTLSKey+"="+pki.keyFile)
	cfg := pki.clientConfig(tls.NewLRUClientSessionCache(8))
	addr := fmt.Sprintf("127.0.0.1:%d", m.port)
	pids := map[string]bool{}
	resumed, total := 0, 40
	for i := 0; i <= total; i++ {
		conn, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		fmt.Fprintf(conn, "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		reply, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		_, body, _ := strings.Cut(string(reply), "\r\n\r\n")
		pids[body] = true
		if i > 0 && conn.ConnectionState().DidResume {
			resumed++
		}
	}
	t.Logf("%d/%d reconnections resumed, served by %d children", resumed, total, len(pids))
	if resumed != total || len(pids) < 3 {
		t.Fatalf("%d/%d resumed, %d children served", resumed, total, len(pids))
	}
	m.stop()
}

func TestTLSKeyMismatchIsErrTLSBeforeAnyChild(t *testing.T) {
	pki := newTestPKI(t)
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envServer+"=1", envAddr+"=127.0.0.1:0",
		envTLSCert+"="+pki.certFile, envTLSKey+"="+pki.otherKey)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err == nil || !strings.Contains(text, "tls-done err-tls=true") ||
		!strings.Contains(text, "does not match") || !strings.Contains(text, pki.otherKey) ||
		strings.Contains(text, "spawn pid=") {
		t.Fatalf("want an ErrTLS naming %s and no child; got %v\n%s", pki.otherKey, err, text)
	}
}

// TLS connections whose requests arrive while the event loop is held (by a /sleep) are
// answered in one batch too: each gets its own answer, encrypted for it.
func TestTLSConnectionsInOneTurnGetTheirOwnAnswers(t *testing.T) {
	pki := newTestPKI(t)
	m := startMaster(t, envChildren+"=1", envTLSCert+"="+pki.certFile, envTLSKey+"="+pki.keyFile)
	addr := fmt.Sprintf("127.0.0.1:%d", m.port)
	dial := func() (*tls.Conn, error) { return tls.Dial("tcp", addr, pki.clientConfig(nil)) }
	hold := kept(t, dial)
	conns := make([]*tls.Conn, 5)
	for i := range conns {
		conns[i] = kept(t, dial) // the handshake is done: the next bytes are requests
	}
	holdTheLoop(t, hold)
	for i, conn := range conns {
		if _, err := fmt.Fprintf(conn, "GET /echo?conn=%d HTTP/1.1\r\nHost: x\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
	}
	for i, conn := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("connection %d: %v\n%s", i, err, m.transcript())
		}
		body := readBody(t, resp)
		if want := fmt.Sprintf("query=conn=%d\n", i); resp.StatusCode != 200 || !strings.Contains(body, want) {
			t.Fatalf("connection %d: %d %q, want %q in it", i, resp.StatusCode, body, want)
		}
	}
	expectResponse(t, bufio.NewReader(hold), 200, "slept")
	m.stop()
}
