#!/usr/bin/env bash
# What building cpp/ needs from the system: a C++17 compiler, CMake and zlib's headers. Missing ones are installed
# from Debian's packages when this runs as root with apt-get (as CI does); otherwise it says what to install and
# exits 3, and `make test` runs without the C++ tests (tests/cpp skip, saying why).
set -euo pipefail
missing=()
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if command -v c++ >/dev/null 2>&1 && ! echo '#include <zlib.h>' | c++ -fsyntax-only -x c++ - >/dev/null 2>&1; then
  missing+=(zlib1g-dev)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the C++ toolchain: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "cpp/ needs ${missing[*]} (Debian package names); install them to build and test the C++ runtime" >&2
exit 3
