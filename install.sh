#!/usr/bin/env bash
# Install bonescan and everything its tests talk to, on a fresh Debian/Ubuntu machine.
#
#   ./install.sh            # system peers (as root, when missing) + .venv with bonescan[dev]
#   BONESCAN_SKIP_APT=1 ./install.sh   # Python only (no apt-get)
#   BONESCAN_SKIP_BROWSER=1 ./install.sh   # without the browser tier (chromium, OHIF viewer)
#
# The browser tier (pytest -m browser) needs Debian's chromium and the OHIF viewer's prebuilt
# dist/ from the npm package @ohif/app (unpacked into .ohif/<version>/, no node_modules).
#
# torch is pinned to the CPU build 2.13.0 through constraints.txt (an unpinned torch pulls
# several GB of CUDA). On a GPU host, install the CUDA torch you want into .venv first and set
# BONESCAN_TORCH_CONSTRAINT=0.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
APT_PACKAGES=(dcmtk orthanc orthanc-dicomweb dicom3tools openssl)
command -v psql >/dev/null 2>&1 || APT_PACKAGES+=(postgresql)
command -v redis-server >/dev/null 2>&1 || APT_PACKAGES+=(redis-server)
OHIF_VERSION=3.13.2  # keep in step with tests/browser/conftest.py
OHIF_DIR=.ohif/$OHIF_VERSION
BROWSER=$([ "${BONESCAN_SKIP_BROWSER:-0}" = "1" ] && echo 0 || echo 1)
if [ "$BROWSER" = "1" ]; then
  APT_PACKAGES+=(chromium)
  command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
fi

say() { printf 'install: %s\n' "$*"; }

missing_packages() {
  local package
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || printf '%s\n' "$package"
  done
}

if [ "${BONESCAN_SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  mapfile -t missing < <(missing_packages)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ]; then
      say "apt-get install ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      say "not root: install these for the tests yourself: sudo apt-get install ${missing[*]}"
    fi
  fi
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "$PYTHON not found: bonescan needs Python 3.11 or newer (set PYTHON=...)"
  exit 1
fi
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }

constraint=(-c constraints.txt)
[ "${BONESCAN_TORCH_CONSTRAINT:-1}" = "0" ] && constraint=()
say "pip install -e .[dev] into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
# (pip repeats a warning per package for index folders some mirrors configure but lack)
"$VENV/bin/python" -m pip install --quiet "${constraint[@]}" -e '.[dev]' \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$VENV/bin/python" -m pip check >/dev/null
if [ "$BROWSER" = "1" ] && [ ! -f "$OHIF_DIR/dist/index.html" ]; then
  if command -v npm >/dev/null 2>&1; then
    say "npm pack @ohif/app@$OHIF_VERSION into $OHIF_DIR"
    mkdir -p .ohif
    unpack=$(mktemp -d .ohif/unpack.XXXXXX)
    trap 'rm -rf "$unpack"' EXIT
    (cd "$unpack" && npm pack --silent --loglevel=error "@ohif/app@$OHIF_VERSION" >/dev/null)
    tar -xzf "$unpack"/ohif-app-"$OHIF_VERSION".tgz -C "$unpack" package/dist
    rm -rf "$OHIF_DIR"
    mv "$unpack/package" "$OHIF_DIR"  # whole or not at all: index.html marks it done
  else
    say "npm not found: the browser tests need it (apt-get install npm)"
  fi
fi
say "done: $("$VENV/bin/bonescan" version); activate with: source $VENV/bin/activate"
