// Package prefork makes a Go program a preforking HTTP/1.1 server through libprefork, a
// Rust library with its own HTTP engine, with the surface of fasthttp's prefork package.
//
// The program is both the master and every child: ListenAndServe in the master binds the
// address and re-executes the program once per child; the same call in a child (IsChild
// reports true there) serves the inherited listener and calls the RequestHandler for each
// request. The master replaces children that exit, up to RecoverThreshold, and stops them
// gracefully on SIGTERM, SIGINT or Shutdown.
//
//	p := prefork.New(func(req *prefork.Request, resp *prefork.Response) {
//		resp.WriteString("hello\n")
//	})
//	if err := p.ListenAndServe(":8080"); err != nil {
//		log.Fatal(err)
//	}
//
// With ServeFunc set, each child runs the program's own server (net/http, fasthttp) on the
// inherited listener instead of the library's engine, under the same supervisor; Stopping
// and Graceful give it the stop signal and a graceful shutdown.
//
// The package links libprefork (see link_shared.go and README.md for the build commands).
package prefork
