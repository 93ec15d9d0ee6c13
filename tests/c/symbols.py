#!/usr/bin/env python3
"""The shared library exports exactly the functions prefork.h declares, all named prefork_*,
and carries the soname libprefork.so.<major>.

    python3 symbols.py LIBRARY HEADER MAJOR
"""

import re
import subprocess
import sys


def main():
    lib, header, major = sys.argv[1:4]
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                        check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.split()[1:2] != ["A"]}
    declared = set(re.findall(r"\b(prefork_\w+)\(", open(header).read()))
    problems = []
    stray = sorted(s for s in exported if not s.startswith("prefork_"))
    if stray:
        problems.append(f"exported symbols outside prefork_*: {stray}")
    if exported != declared:
        problems.append(f"exported but not in the header: {sorted(exported - declared)}; "
                        f"in the header but not exported: {sorted(declared - exported)}")
    dynamic = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True,
                             check=True).stdout
    if f"[libprefork.so.{major}]" not in dynamic:
        problems.append(f"no SONAME libprefork.so.{major}: {dynamic}")
    if problems:
        sys.exit("FAIL symbols:\n  " + "\n  ".join(problems))
    print(f"PASS symbols: {len(exported)} prefork_* functions, soname libprefork.so.{major}")
    print("\n".join(sorted(exported)))


if __name__ == "__main__":
    main()
