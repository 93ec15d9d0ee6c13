package prefork_test

// The migration guide's "after" programs (README.md, examples/migrate-*) run as the guide
// says: built with the go command, each serves its routes from two children, says where once
// they are all ready, and stops on SIGTERM with status 0 and no child left.

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"libprefork.dev/prefork"
)

func TestMigrationExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three programs")
	}
	serving := regexp.MustCompile(`serving on (127\.0\.0\.1:\d+), children \[(\d+) (\d+)\]$`)
	for _, ex := range []struct{ name, dir, pkg string }{
		{"handler", ".", "./examples/migrate-handler"},
		{"nethttp", ".", "./examples/migrate-nethttp"},
		// Its own module: it imports fasthttp.
		{"servefunc", "examples/migrate-fasthttp", "./servefunc"},
	} {
		t.Run(ex.name, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), ex.name)
			build := exec.Command("go", "build", "-o", bin, ex.pkg)
			build.Dir = ex.dir
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build %s: %v\n%s", ex.pkg, err, out)
			}
			cmd := exec.Command(bin, "--addr", "127.0.0.1:0", "--children", "2")
			// The test binary's own role variables must not reach the example.
			cmd.Env = append(os.Environ(), envServer+"=", prefork.ChildEnv+"=")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // whatever is left if a check fails
			lines := make(chan string, 64)
			go func() {
				defer close(lines)
				for s := bufio.NewScanner(stderr); s.Scan(); {
					lines <- s.Text()
				}
			}()
			var m []string
			for deadline := time.After(waitBound); m == nil; {
				select {
				case line, ok := <-lines:
					if !ok {
						t.Fatalf("%s exited before it served", ex.name)
					}
					m = serving.FindStringSubmatch(line)
				case <-deadline:
					t.Fatalf("%s did not say where it serves within %v", ex.name, waitBound)
				}
			}
			go func() {
				for range lines { // keep draining so the program never blocks on stderr
				}
			}()
			base := "http://" + m[1]
			for _, c := range []struct {
				path, ctype, body string
				code              int
			}{
				{"/", "text/plain", "Hello, World!", 200},
				{"/users?id=7", "application/json", `{"id":"7"}`, 200},
				{"/nowhere", "", "", 404},
			} {
				resp, err := client.Get(base + c.path)
				if err != nil {
					t.Fatal(err)
				}
				body := readBody(t, resp)
				if resp.StatusCode != c.code || (c.code == 200 && (body != c.body || resp.Header.Get("Content-Type") != c.ctype)) {
					t.Errorf("GET %s = %d %q %q, want %d %q %q", c.path, resp.StatusCode,
						resp.Header.Get("Content-Type"), body, c.code, c.ctype, c.body)
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s after SIGTERM: %v, want exit status 0", ex.name, err)
				}
			case <-time.After(waitBound):
				t.Fatalf("%s still runs %v after SIGTERM", ex.name, waitBound)
			}
			for _, s := range m[2:] {
				pid, _ := strconv.Atoi(s)
				if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
					t.Errorf("child %d is still there after the master exited", pid)
				}
			}
		})
	}
}
