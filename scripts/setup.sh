#!/usr/bin/env bash
# One-time set-up: system tools (Debian/Ubuntu), a virtual environment with detector-app, and the
# offline fixture videos. Safe to run again (it skips what is already there).
#
#   scripts/setup.sh            # everything
#   VENV=/path/to/venv scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
APT_PACKAGES=(ffmpeg srt-tools nginx libnginx-mod-rtmp chromium chromium-driver)

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] %s\033[0m\n' "$*" >&2; exit 1; }

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v srt-live-transmit >/dev/null 2>&1 || missing+=(srt-tools)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(nginx libnginx-mod-rtmp)
# Headless Chromium and its driver: the web viewer's real-browser test (selenium drives them).
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    say "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  else
    die "please install: ${missing[*]} (ffmpeg with libx264, srt-tools; nginx-rtmp for the serve ingest and the benchmark baseline)"
  fi
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python 3.10+ is required ($PY is $("$PY" --version))"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
say "installing detector-app and its dependencies into $VENV (first time: several minutes, torch is large)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,fast,triton]"

# Shared inference (detector-app inference-server): PyPI's nvidia-pytriton bundles tritonserver but needs
# numpy<2, which Ultralytics' environment cannot have, so it gets its own. Skipped when already complete.
TRITON_VENV="${TRITON_VENV:-.venv-triton}"
if ! "$TRITON_VENV/bin/python" -c 'import pytriton, onnxruntime' >/dev/null 2>&1; then
  say "installing the Triton environment $TRITON_VENV (nvidia-pytriton, onnxruntime, numpy<2)"
  [ -x "$TRITON_VENV/bin/python" ] || "$PY" -m venv "$TRITON_VENV"
  "$TRITON_VENV/bin/python" -m pip install -q --disable-pip-version-check "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime \
    || say "WARNING: the Triton environment could not be installed; inference-server and its tests are unavailable"
fi

# The official @mentra/sdk lines the contract test runs (one pinned install each) and Bun for the 3.x
# lines, all from the npm registry (tests/test_sdk_contract.py; without npm those tests skip and say why).
if command -v npm >/dev/null 2>&1; then
  say "installing the @mentra/sdk lines and Bun for the SDK contract test (tests/sdk_contract)"
  for dir in tests/sdk_contract/sdk-* tests/sdk_contract/bun; do
    [ -d "$dir/node_modules" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ] && continue
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || say "WARNING: npm ci failed in $dir"
  done
else
  say "npm not found: the official-SDK contract tests will be skipped (install nodejs and npm)"
fi

say "composing the offline fixture videos (data/fixtures)"
"$VENV/bin/detector-app" fixtures --out-dir data/fixtures >/dev/null

say "ready. Try:  $VENV/bin/detector-app replay data/fixtures/cat_720p30.mp4 --model models/fixture-animals-yolo11n.pt"
