#!/usr/bin/env bash
# The C side end to end: the CMake build (the Rust library through cargo, the examples and the
# tests, all C code under ASAN+UBSan), ctest (the examples and api_test as real preforking
# servers on 127.0.0.1, exported symbols), then install into a temporary prefix and build
# consumers with find_package(prefork) and with pkg-config (the install_consumers test).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
# systemd-socket-activate (package systemd): the demo_systemd scenario's service manager.
for tool in cmake:cmake ninja:ninja-build gcc:gcc g++:g++ pkg-config:pkg-config readelf:binutils python3:python3 openssl:openssl systemd-socket-activate:systemd systemd-analyze:systemd unshare:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# ASAN's runtime ships with gcc; without it -fsanitize=address cannot link.
if ! echo 'int main(void){return 0;}' | gcc -x c -fsanitize=address,undefined -o /dev/null - 2>/dev/null; then
  echo "installing libasan/libubsan with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libasan8 libubsan1 >/dev/null
fi

# The deploy_files test parses the Kubernetes manifest with PyYAML.
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "installing PyYAML with pip"
  # A Debian python3 refuses pip (PEP 668): its own package then.
  python3 -m pip install -q pyyaml 2>/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null; }
fi

build=build/ci
# The cargo target dir and profile of stage 10: the library is built already, cmake's cargo
# call finds it fresh.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPREFORK_SANITIZE=ON \
  -DPREFORK_CARGO_TARGET_DIR="$PWD/target" >/dev/null
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure --timeout 180
