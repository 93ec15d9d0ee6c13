/* hello: the smallest useful prefork server. Run it, then: curl http://127.0.0.1:8080/
 * The master re-runs this program once per CPU; every child answers "Hello, World!".
 * Ctrl-C (SIGINT) or SIGTERM stops the master and its children gracefully. */
#include <stdio.h>

#include "prefork.h"

static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
    (void)user_data;
    (void)req;
    prefork_response_add_header(resp, "Content-Type", 12, "text/plain", 10);
    prefork_response_write(resp, "Hello, World!\n", 14);
}

int main(int argc, char **argv) {
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:8080";
    prefork_handler handler = {.handle = handle};
    prefork *server;
    if (prefork_new(&handler, &server) != PREFORK_OK) return 1;

    prefork_result r = prefork_listen_and_serve(server, addr);
    if (r != PREFORK_OK) fprintf(stderr, "hello: %s\n", prefork_last_error());
    prefork_free(server);
    return r == PREFORK_OK ? 0 : 1;
}
