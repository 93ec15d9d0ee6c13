#!/usr/bin/env bash
# Installs the CMake build into a temporary prefix, checks the installed layout, then builds
# and runs consumer programs against it: (a) with find_package(prefork), shared and static,
# (b) with pkg-config.  Usage: install_consumers.sh BUILD_DIR SOURCE_DIR VERSION
set -euo pipefail
build=$1 src=$2 version=$3
major=${version%%.*}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name "libprefork.so.$version" | head -n1)")
[ -f "$libdir/libprefork.so.$version" ] || { echo "FAIL: libprefork.so.$version not installed"; exit 1; }
[ "$(readlink "$libdir/libprefork.so.$major")" = "libprefork.so.$version" ] ||
  { echo "FAIL: libprefork.so.$major is not a link to libprefork.so.$version"; exit 1; }
[ "$(readlink "$libdir/libprefork.so")" = "libprefork.so.$major" ] ||
  { echo "FAIL: libprefork.so is not a link to libprefork.so.$major"; exit 1; }
for f in "$libdir/libprefork.a" "$prefix/include/prefork.h" "$libdir/pkgconfig/prefork.pc" \
         "$libdir/cmake/prefork/preforkConfig.cmake" "$libdir/cmake/prefork/preforkConfigVersion.cmake"; do
  [ -f "$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
echo "installed layout ok under $prefix"

# (a) find_package(prefork)
cmake -S "$src/tests/c/consumer" -B "$tmp/a" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/a" >/dev/null
readelf -d "$tmp/a/consumer_shared" | grep -q "NEEDED.*\[libprefork.so.$major\]" ||
  { echo "FAIL: consumer_shared does not need libprefork.so.$major"; exit 1; }
if readelf -d "$tmp/a/consumer_static" | grep -q "NEEDED.*libprefork"; then
  echo "FAIL: consumer_static links libprefork dynamically"; exit 1
fi
"$tmp/a/consumer_shared"
"$tmp/a/consumer_static"
echo "find_package consumer ok (shared and static)"

# (b) pkg-config
export PKG_CONFIG_PATH=$libdir/pkgconfig
[ "$(pkg-config --modversion prefork)" = "$version" ] || { echo "FAIL: pkg-config version"; exit 1; }
mkdir -p "$tmp/b"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror -pedantic -o "$tmp/b/consumer" "$src/tests/c/consumer/consumer.c" \
  $(pkg-config --cflags --libs prefork) -Wl,-rpath,"$(pkg-config --variable=libdir prefork)"
"$tmp/b/consumer"
echo "pkg-config consumer ok"
echo "PASS install_consumers"
