#!/usr/bin/env python3
"""The shared library exports exactly the functions prefork.h declares plus those of every
frozen older header (the ABI only grows: a function a released header declared stays), all
named prefork_*, and carries the soname libprefork.so.<major>.

    python3 symbols.py LIBRARY HEADER MAJOR [OLD_HEADER...]
"""

import re
import subprocess
import sys


def declared_functions(header):
    """Function names a header declares (its function-like macros are not functions)."""
    text = "\n".join(line for line in open(header).read().splitlines()
                     if not line.lstrip().startswith("#"))
    return set(re.findall(r"\b(prefork_\w+)\(", text))


def main():
    lib, header, major = sys.argv[1:4]
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                        check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.split()[1:2] != ["A"]}
    declared = declared_functions(header)
    for old in sys.argv[4:]:
        declared |= declared_functions(old)
    problems = []
    stray = sorted(s for s in exported if not s.startswith("prefork_"))
    if stray:
        problems.append(f"exported symbols outside prefork_*: {stray}")
    if exported != declared:
        problems.append(f"exported but in no header: {sorted(exported - declared)}; "
                        f"in a header but not exported: {sorted(declared - exported)}")
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
