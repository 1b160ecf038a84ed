#!/usr/bin/env bash
# start_demo.sh — start detector-app for a demo, after checking everything it needs.
#
#   scripts/start_demo.sh                 real Mentra Live glasses: checks, prints the URLs, runs `detector-app serve`
#   scripts/start_demo.sh --simulate …    offline demo (simulated cloud + virtual glasses): `detector-app demo …`
#
# Every missing piece is reported (all at once) with how to fix it; the API key is never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: scripts/start_demo.sh [--simulate] [extra detector-app options…]

Real-glasses mode (default) checks the configuration, then runs `detector-app serve`:
  MENTRAOS_API_KEY   API key from the MentraOS developer console (required; never printed)
  PACKAGE_NAME       your app's package name, e.g. com.you.detector (required)
  PORT               webhook port (default 3000)
  INGEST_PROTOCOL    rtmp (default) or srt (needs srt-live-transmit from srt-tools)
  INGEST_PORT        fixed ingest port (default: a free port per glasses session)
  INGEST_HOST        address the glasses can reach (default: this machine's LAN address)
  PUBLIC_URL         public base URL registered in the developer console (e.g. your tunnel)
  DETECTOR_MODEL     model name/path (default: yolo11n.pt from models/ or the current directory)
  FEED_PORT          WebSocket detection feed port (default 8765, 0 = off)
  WEB_PORT           live web viewer port, e.g. 8080 (default 0 = off; WEB_HOST, WEB_TOKEN: README "Web viewer")
Variables may also come from a .env file in the project root.

--simulate runs the offline demo instead (no glasses, no internet), passing the other options on,
e.g.  scripts/start_demo.sh --simulate --headless --duration 30   or   --glasses even_g1

Examples:
  MENTRAOS_API_KEY=… PACKAGE_NAME=com.you.detector scripts/start_demo.sh
  scripts/start_demo.sh --simulate
EOF
}

MODE=serve
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --simulate) MODE=simulate ;;
        -h|--help) usage; exit 0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

PROBLEMS=0
problem() { echo "✗ $*" >&2; PROBLEMS=$((PROBLEMS + 1)); }
ok() { echo "✓ $*"; }

cd "$ROOT"

# .env (the same file `detector-app serve` reads), so the checks see what the app will see.
if [[ -f .env ]]; then
    set -a
    # shellcheck disable=SC1091
    . ./.env
    set +a
fi

# -- the app itself ------------------------------------------------------------------------------
if [[ -x "$ROOT/.venv/bin/detector-app" ]]; then
    APP=("$ROOT/.venv/bin/detector-app")
    PY="$ROOT/.venv/bin/python"
elif [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c 'import detector_app.cli' >/dev/null 2>&1; then
    APP=("$ROOT/.venv/bin/python" -m detector_app.cli)  # venv with the dependencies, project not pip-installed
    PY="$ROOT/.venv/bin/python"
elif command -v detector-app >/dev/null 2>&1; then
    APP=("$(command -v detector-app)")
    PY="$(command -v python3 || true)"
else
    problem "detector-app is not installed. Install it:  python3 -m venv .venv && .venv/bin/pip install -e ."
    echo "Fix the problem above and run again." >&2
    exit 1
fi
ok "detector-app: ${APP[*]}"

if ! command -v ffmpeg >/dev/null 2>&1; then
    problem "ffmpeg not found (needed for video). Install it:  sudo apt-get install ffmpeg"
else
    ok "ffmpeg: $(command -v ffmpeg)"
fi

wants_srt() {
    [[ "${INGEST_PROTOCOL:-rtmp}" == "srt" ]] && return 0
    local prev=""
    for a in "${ARGS[@]+"${ARGS[@]}"}"; do
        [[ "$a" == "--protocol=srt" || "$a" == "-p=srt" ]] && return 0
        [[ ( "$prev" == "--protocol" || "$prev" == "-p" ) && "$a" == "srt" ]] && return 0
        prev="$a"
    done
    return 1
}
if wants_srt; then
    if command -v srt-live-transmit >/dev/null 2>&1; then
        ok "srt-live-transmit: $(command -v srt-live-transmit)"
    else
        problem "SRT ingest needs srt-live-transmit:  sudo apt-get install srt-tools   (or use INGEST_PROTOCOL=rtmp)"
    fi
fi

# -- offline demo --------------------------------------------------------------------------------
if [[ "$MODE" == "simulate" ]]; then
    if (( PROBLEMS > 0 )); then
        echo "$PROBLEMS problem(s) above; fix them and run again." >&2
        exit 1
    fi
    echo "Starting the offline demo (simulated MentraOS cloud + virtual glasses). Ctrl-C stops."
    exec "${APP[@]}" demo "${ARGS[@]+"${ARGS[@]}"}"
fi

# -- real glasses: configuration -----------------------------------------------------------------
if [[ -z "${MENTRAOS_API_KEY:-}" ]]; then
    problem "MENTRAOS_API_KEY is not set: developer console (console.mentra.glass) → your app → API key; export it or put it in .env"
else
    ok "MENTRAOS_API_KEY is set (not shown)"
fi
if [[ -z "${PACKAGE_NAME:-}" ]]; then
    problem "PACKAGE_NAME is not set: the package name of your app in the developer console, e.g. com.you.detector"
else
    ok "PACKAGE_NAME: $PACKAGE_NAME"
fi

PORT="${PORT:-3000}"
PROTO="${INGEST_PROTOCOL:-rtmp}"
if wants_srt; then PROTO=srt; fi
if [[ "$PROTO" != "rtmp" && "$PROTO" != "srt" ]]; then
    problem "INGEST_PROTOCOL must be rtmp or srt (got '$PROTO')"
fi

# port_free PORT tcp|udp — can we bind it (exactly what the app will do)?
port_free() {
    "$PY" - "$1" "$2" <<'PYEOF' >/dev/null 2>&1
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[2] == "udp" else socket.SOCK_STREAM
with socket.socket(socket.AF_INET, kind) as s:
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
PYEOF
}
check_port() {  # check_port NAME PORT tcp|udp HINT
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (( $2 < 1 || $2 > 65535 )); then
        problem "$1 must be a port number 1-65535 (got '$2')"
    elif port_free "$2" "$3"; then
        ok "$1 $2/$3 is free"
    else
        problem "$1 $2/$3 is already in use (another detector-app or SDK app?). $4"
    fi
}
check_port "webhook port (PORT)" "$PORT" tcp "Pick another: PORT=3001 $0"
if [[ -n "${INGEST_PORT:-}" ]]; then
    if [[ "$PROTO" == "srt" ]]; then proto_l4=udp; else proto_l4=tcp; fi
    check_port "ingest port (INGEST_PORT)" "$INGEST_PORT" "$proto_l4" "Pick another, or unset INGEST_PORT for a free port per session."
fi
FEED="${FEED_PORT:-8765}"
if [[ "$FEED" != "0" ]]; then
    check_port "detection feed port (FEED_PORT)" "$FEED" tcp "Pick another, or FEED_PORT=0 to turn the feed off."
fi

# -- model ---------------------------------------------------------------------------------------
if [[ -n "${DETECTOR_MODEL:-}" ]]; then
    if [[ -e "$DETECTOR_MODEL" || -e "models/$DETECTOR_MODEL" ]]; then
        ok "model: $DETECTOR_MODEL"
    elif [[ "$DETECTOR_MODEL" == */* ]]; then
        problem "DETECTOR_MODEL=$DETECTOR_MODEL: file not found"
    else
        echo "! model $DETECTOR_MODEL is not local: Ultralytics will download it at start (needs internet)"
    fi
elif [[ -e models/yolo11n.pt || -e yolo11n.pt ]]; then
    ok "model: yolo11n.pt"
else
    problem "model yolo11n.pt not found in models/ or $ROOT. Get it: where internet exists it downloads automatically \
(set DETECTOR_MODEL=yolo11n.pt to let the app fetch it at start), or copy yolo11n.pt into models/."
fi

if (( PROBLEMS > 0 )); then
    echo "$PROBLEMS problem(s) above; fix them and run again (scripts/start_demo.sh --help)." >&2
    exit 1
fi

# -- what to register / expect -------------------------------------------------------------------
LAN="$("$PY" -c 'from detector_app.ingest.addresses import detect_lan_address as d; print(d() or "")' 2>/dev/null || true)"
if [[ -z "$LAN" ]]; then LAN="<LAN-ip of this machine>"; fi
INGEST_ADDR="${INGEST_HOST:-$LAN}"
INGEST_P="${INGEST_PORT:-<free port per session>}"

echo
echo "Webhook (register in the developer console → your app → Server URL):"
echo "    http://$LAN:$PORT/webhook"
if [[ -n "${PUBLIC_URL:-}" ]]; then
    echo "    ${PUBLIC_URL%/}/webhook   (PUBLIC_URL)"
else
    echo "  The MentraOS cloud must reach it from the internet: use a public URL, e.g. a tunnel"
    echo "  (ngrok http $PORT / cloudflared tunnel --url http://localhost:$PORT) and register <public URL>/webhook."
fi
echo "Glasses stream (the glasses must be on the same network as this machine):"
if [[ "$PROTO" == "srt" ]]; then
    echo "    srt://$INGEST_ADDR:$INGEST_P?streamid=<per-session key>&passphrase=…"
else
    echo "    rtmp://$INGEST_ADDR:$INGEST_P/live/<per-session key>"
fi
echo "Start the app on the glasses (Mentra app on the phone); Ctrl-C stops the stream and exits."
echo

exec "${APP[@]}" serve "${ARGS[@]+"${ARGS[@]}"}"
