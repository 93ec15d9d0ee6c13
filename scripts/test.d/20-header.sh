#!/usr/bin/env bash
# The C header: include/prefork.h is what cbindgen makes of src/ffi today (drift fails), and it
# compiles cleanly as C99, C11, C++11 and C++17 with -Wall -Wextra -Werror -pedantic.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "--- header drift (regenerate with scripts/gen-header)"
cargo test --locked --quiet --test header

echo "--- header compiles as C and C++"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/use.c" <<'C'
#include "prefork.h"
#include "prefork.h" /* the include guard works */
static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
    (void)user_data;
    (void)req;
    (void)resp;
}
int main(void) {
    /* Members by name over zero, the one way that works in C and C++ alike. */
    static prefork_handler h;
    static prefork_hooks hooks;
    prefork *p = 0;
    prefork_str s = {0, 0};
    (void)s;
    h.handle = handle;
    /* The size-passing macros expand in C and C++. */
    if (prefork_new(&h, &p) != PREFORK_OK || prefork_set_hooks(p, &hooks) != PREFORK_OK) return 1;
    prefork_free(p);
    return PREFORK_OK + PREFORK_VERSION_MAJOR * 0 + (int)sizeof(PREFORK_VERSION) * 0;
}
C
cp "$tmp/use.c" "$tmp/use.cpp"
flags=(-Wall -Wextra -Werror -pedantic -Iinclude -fsyntax-only)
for std in c99 c11; do
  gcc -std=$std "${flags[@]}" -Wstrict-prototypes -Wmissing-prototypes "$tmp/use.c"
  echo "ok: gcc -std=$std"
done
for std in c++11 c++17; do
  g++ -std=$std "${flags[@]}" "$tmp/use.cpp"
  echo "ok: g++ -std=$std"
done
