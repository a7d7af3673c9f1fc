#!/usr/bin/env bash
# Build KenLM's `lmplz` (n-gram estimation) and `build_binary` (ARPA -> mmap binary) from the
# source distribution on PyPI, into ./tools/kenlm/bin (override with KENLM_BIN=/some/dir).
#
# The `kenlm` pip wheel only ships the query-side Python module; the estimation tools have to
# be compiled. Re-running is cheap: it exits early when both binaries already exist.
#
#   scripts/build_kenlm.sh            # apt deps (if missing) + download + build
#   JOBS=4 scripts/build_kenlm.sh     # parallel compile jobs (default 2)
#   PYTHON=.venv/bin/python scripts/build_kenlm.sh   # which pip downloads the sdist
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools/kenlm"
BIN="${KENLM_BIN:-$TOOLS/bin}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$BIN/lmplz" && -x "$BIN/build_binary" ]]; then
  echo "kenlm: $BIN/lmplz and $BIN/build_binary already exist; nothing to do"
  exit 0
fi

# What CMakeLists.txt needs: a C++ toolchain + cmake; Boost program_options/system/thread and
# unit_test_framework (find_package(Boost REQUIRED ...) lists it even with tests off); zlib,
# bzip2 and xz so lmplz can read compressed corpora. Eigen3 is skipped: it only enables the
# `interpolate` tool, which we don't use.
DEB_PACKAGES=(
  build-essential cmake
  libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
  zlib1g-dev libbz2-dev liblzma-dev
)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "kenlm: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The sdist carries the full C++ tree (util/, lm/, CMakeLists.txt). --no-build-isolation stops
# pip from compiling the sdist's build requirements (cmake!) from source just to read metadata.
mkdir -p "$TOOLS"
if [[ ! -f "$TOOLS/src/CMakeLists.txt" ]]; then
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  echo "kenlm: downloading the source distribution from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    kenlm -d "$download"
  sdist="$(ls "$download"/kenlm-*.tar.gz)"
  rm -rf "$TOOLS/src"
  mkdir -p "$TOOLS/src"
  tar -xzf "$sdist" -C "$TOOLS/src" --strip-components=1
fi

echo "kenlm: building lmplz and build_binary with $JOBS jobs"
cmake -S "$TOOLS/src" -B "$TOOLS/build" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF \
  -DENABLE_PYTHON=OFF >"$TOOLS/cmake.log"
# The compiler's warnings (hundreds of lines from KenLM's and Boost's headers) go to a log;
# on failure its tail is shown.
if ! cmake --build "$TOOLS/build" --target lmplz build_binary -j "$JOBS" >"$TOOLS/build.log" 2>&1; then
  tail -n 40 "$TOOLS/build.log" >&2
  echo "kenlm: build failed; full log in $TOOLS/build.log" >&2
  exit 1
fi

mkdir -p "$BIN"
cp "$TOOLS/build/bin/lmplz" "$TOOLS/build/bin/build_binary" "$BIN/"
# A two-sentence corpus through both tools proves the binaries run, not just link.
printf "a b\nb a\n" | "$BIN/lmplz" -o 2 --discount_fallback -S 10% -T "$TOOLS" 2>/dev/null >"$TOOLS/smoke.arpa"
"$BIN/build_binary" "$TOOLS/smoke.arpa" "$TOOLS/smoke.bin" >/dev/null
rm -f "$TOOLS/smoke.arpa" "$TOOLS/smoke.bin"
echo "kenlm: installed $BIN/lmplz and $BIN/build_binary"
