#!/usr/bin/env bash
# A new user's first run: clone the repository into a temporary folder, then `make demo` and
# `make test` there, exactly as the README says, and report the time and .venv size of each.
# It checks that the demo's environment holds no test oracle (torch, OpenCV, Playwright,
# hypothesis). Usage: scripts/fresh_clone_check.sh [--demo-only] [--keep]
# The clone takes the last commit (HEAD), not uncommitted changes.
set -euo pipefail
demo_only=0 keep=0
for arg in "$@"; do
    case "$arg" in
        --demo-only) demo_only=1 ;;
        --keep) keep=1 ;;
        *) echo "usage: $0 [--demo-only] [--keep]" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/convlayers-fresh.XXXXXX")"
if [ "$keep" = 0 ]; then trap 'rm -rf "$work"' EXIT; fi
git clone -q "$repo" "$work/convlayers"
cd "$work/convlayers"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/convlayers"

step() {  # step NAME COMMAND...: run it, then print its wall time and the venv's size
    local name="$1" start=$SECONDS
    shift
    "$@"
    echo "== $name: $((SECONDS - start)) s; .venv $(du -sm .venv | cut -f1) MB"
}

step "make install (the demo's environment)" make install
step "make demo (first run: empty numba cache)" make demo
test -s out/demo/gallery.png || { echo "make demo wrote no out/demo/gallery.png" >&2; exit 1; }
for module in torch cv2 playwright hypothesis; do
    if .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
        echo "make demo installed $module, a test-only package" >&2
        exit 1
    fi
done
echo "== the demo's environment holds no torch, OpenCV, Playwright or hypothesis"
if [ "$demo_only" = 0 ]; then
    step "make test (adds the test environment, then runs the tests)" make test
fi
