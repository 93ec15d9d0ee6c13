/* A program outside the project that uses an installed libprefork: built once against the
 * CMake package (shared and static) and once with pkg-config by install_consumers.sh. */
#include <stdio.h>
#include <string.h>

#include <prefork.h>

static void handle(void *ud, const prefork_request *req, prefork_response *resp) {
    (void)ud;
    (void)req;
    prefork_response_write(resp, "hi", 2);
}

int main(void) {
    prefork_handler handler = {.handle = handle};
    prefork *server = NULL;
    if (strcmp(prefork_version(), PREFORK_VERSION) != 0) {
        fprintf(stderr, "header %s, library %s\n", PREFORK_VERSION, prefork_version());
        return 1;
    }
    if (prefork_new(&handler, &server) != PREFORK_OK ||
        prefork_set_children(server, 1) != PREFORK_OK) {
        fprintf(stderr, "consumer: %s\n", prefork_last_error());
        return 1;
    }
    prefork_free(server);
    printf("consumer: libprefork %s\n", prefork_version());
    return 0;
}
