#!/usr/bin/env bash
# Runs every im-bench shape against im-server, then pairs/fanout/idle against Redis pub/sub and
# Redis streams with the append-only file, and writes BENCHMARKS.md at the top of the repository.
#
#   scripts/bench.sh            the full run (under 10 minutes), writes BENCHMARKS.md
#   scripts/bench.sh --smoke    every shape for about a second with tiny sizes; checks only that
#                               each runs and verifies delivery (for CI); writes nothing
#   scripts/bench.sh --quick    the full report from small sizes and 2-second windows (to check
#                               the report itself; the figures mean little)
#   scripts/bench.sh --repeat=N the pairs and fanout rows N times each (default 3), reporting the
#                               median of each figure; other rows run once
#   OTHER_CPU_LIMIT=P           (default 10) a run during which other work on the machine took
#                               more than P% of a CPU is repeated (twice at most); if it still is,
#                               the report is written beside BENCHMARKS.md as
#                               BENCHMARKS.md.contaminated instead, and the script fails. Other
#                               work starves the peer's rows more than ours (Redis sleeps between
#                               turns and loses its core; im-server keeps it), so a contaminated
#                               run flatters im-server.
# The full run takes about 20 minutes here; it also draws BENCHMARKS-timeline.svg, the
# per-second deliveries and p99.9 of pairs-100 for im-server and Redis pub/sub.
#
# Servers are pinned to CPU 0 and the bench to CPU 1 (taskset), each server on a fresh temporary
# directory. Only the processes this script starts are stopped, by PID, when it exits.
set -euo pipefail

MODE=full
OUT=
REPEAT=3
for arg in "$@"; do
    case "$arg" in
        --smoke) MODE=smoke ;;
        --quick) MODE=quick ;;
        --out=*) OUT="${arg#--out=}" ;;
        --repeat=*) REPEAT="${arg#--repeat=}" ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/BENCHMARKS.md}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/im-bench.XXXXXX")"
RESULTS="$WORK/results.tsv"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
STARTED_PIDS=()
FAILED=0
OTHER_CPU_LIMIT=${OTHER_CPU_LIMIT:-10}
CONTAMINATED=()

cleanup() {
    for pid in "${STARTED_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench.sh: $*" >&2; }

# Prints a command line as the shell would read it back (empty arguments stay visible).
quoted() { local out; printf -v out '%q ' "$@"; echo "${out% }"; }

# Stops one process this script started and waits for it.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

if [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_BENCH=(taskset -c 1)
else
    log "only one CPU: running unpinned"
    PIN_SERVER=()
    PIN_BENCH=()
fi

# Sizes.
NOFILE=$(ulimit -n)
if [ "$MODE" = smoke ] || [ "$MODE" = quick ]; then
    [ "$MODE" = smoke ] && REPEAT=1
    SECONDS_ARG=(--seconds 1 --warmup 0.2 --timeout 60)
    [ "$MODE" = quick ] && SECONDS_ARG=(--seconds 3 --warmup 0.2 --timeout 60)
    PAIRS_SMALL=2; PAIRS_LARGE=4; WINDOW=4; BODY=64
    FANOUT=5; IDLE=20; LOGIN_CONNS=4; DRAIN=500
else
    SECONDS_ARG=(--seconds 10 --warmup 1 --timeout 120)
    PAIRS_SMALL=100; PAIRS_LARGE=1000; WINDOW=16; BODY=64
    FANOUT=1000; LOGIN_CONNS=64; DRAIN=100000
    IDLE=19000
    if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt 20000 ]; then
        IDLE=$(( NOFILE > 2000 ? NOFILE - 1000 : NOFILE / 2 ))
        log "ulimit -n is $NOFILE: idle uses $IDLE connections"
    fi
fi
DRAIN_DEVICES=3
IDLE_ARGS=(--seconds 5 --timeout 180)
[ "$MODE" != full ] && IDLE_ARGS=(--seconds 1 --timeout 60)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "nothing listens on port $port"
    return 1
}

# run LABEL ARGS...: one im-bench run; its JSON line goes to $RESULTS under LABEL. The pairs
# and fanout shapes run $REPEAT times; the report takes the median of each figure.
run() {
    local times=1
    [[ "$*" == *" pairs "* || "$*" == *" fanout "* ]] && times=$REPEAT
    for _ in $(seq "$times"); do run_once "$@"; done
}

run_once() {
    local label=$1; shift
    local cmd=("${PIN_BENCH[@]}" "$BENCH" "$@" --json)
    quoted "${cmd[@]}" | sed "s#$ROOT/##g" >>"$COMMANDS"
    log "$label: ${cmd[*]}"
    local json rc other attempt
    for attempt in 1 2 3; do
        rc=0
        json=$("${cmd[@]}" 2>"$WORK/last.err") || rc=$?
        sed 's/^/    /' "$WORK/last.err" >&2
        other=$(sed -n 's/.*"other_cpu_pct":\([0-9.]*\).*/\1/p' <<<"$json")
        # The smoke run only checks that each shape works; its figures are not reported.
        if [ "$MODE" = smoke ] || [ -z "$other" ] || ! awk -v o="$other" -v l="$OTHER_CPU_LIMIT" 'BEGIN { exit !(o > l) }'; then
            break
        fi
        log "$label: other work took $other% of a CPU during the run (limit $OTHER_CPU_LIMIT%)"
        if [ "$attempt" -eq 3 ]; then
            CONTAMINATED+=("$label ($other%)")
        else
            log "$label: busiest now: $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | tr -s ' ' | paste -sd,); repeating in 10 s"
            sleep 10
        fi
    done
    if [ -z "$json" ]; then
        json="{\"verified\":false,\"failures\":[\"im-bench exited $rc without a report\"]}"
    fi
    printf '%s\t%s\n' "$label" "$json" >>"$RESULTS"
    if [ "$rc" -ne 0 ]; then
        log "$label FAILED (exit $rc)"
        FAILED=1
    fi
}

log "building (release)"
(cd "$ROOT" && cargo build --release --bins --quiet)
SERVER="$ROOT/target/release/im-server"
BENCH="$ROOT/target/release/im-bench"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The busiest processes before the run: other work on these CPUs distorts every figure.
BUSY_BEFORE=$(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | awk '{printf "%s%s %s%%", (NR>1?", ":""), $2, $1}')

# ---------------------------------------------------------------- im-server
# start_im NAME [FLAGS...]: starts im-server on a fresh directory $WORK/NAME with the bench
# flags plus FLAGS; sets IM_PID, ADDR (plain), TLS_ADDR and HTTP_ADDR (when --tls-listen or
# --http-listen is among FLAGS).
start_im() {
    local name=$1; shift
    mkdir -p "$WORK/$name"
    # The drain runs measure pushing a backlog of $DRAIN messages, so the device backlog cap
    # (past which a device gets SYNC_GAP and only the newest entries) must lie above it.
    SERVER_CMD=("${PIN_SERVER[@]}" "$SERVER" --listen 127.0.0.1:0 --db "$WORK/$name/bench.db"
        --min-kdf-iterations 1000 --max-connections 19500
        --send-rate 0 --max-offline 0 --max-sessions 0 --device-backlog-cap $((2 * DRAIN))
        --max-pending-requests 65535 --max-friends 65535 "$@")
    quoted "${SERVER_CMD[@]}" | sed "s#$ROOT/##g; s#$WORK#\$TMP#g" >>"$COMMANDS"
    # Made here, not by the background job's redirection, so the sed below never runs before
    # it exists (under pipefail a missing file would end the script).
    : >"$WORK/$name/stdout"
    "${SERVER_CMD[@]}" >"$WORK/$name/stdout" 2>"$WORK/$name/stderr" &
    IM_PID=$!
    STARTED_PIDS+=("$IM_PID")
    ADDR=
    for _ in $(seq 100); do
        ADDR=$(sed -n 's/^listening on //p' "$WORK/$name/stdout" | head -1)
        TLS_ADDR=$(sed -n 's/^listening for TLS on //p' "$WORK/$name/stdout" | head -1)
        HTTP_ADDR=$(sed -n 's/^listening for HTTP on //p' "$WORK/$name/stdout" | head -1)
        if [ -n "$ADDR" ] && { [ -n "$TLS_ADDR" ] || [[ " $* " != *" --tls-listen "* ]]; } &&
            { [ -n "$HTTP_ADDR" ] || [[ " $* " != *" --http-listen "* ]]; }; then break; fi
        sleep 0.1
    done
    [ -n "$ADDR" ] || { log "im-server did not start:"; cat "$WORK/$name/stderr" >&2; exit 1; }
    sleep 0.3
}

start_im im
IM_RSS_START=$(awk '/^VmRSS:/ {print $2}' "/proc/$IM_PID/status")
IM_BINARY_BYTES=$(stat -c %s "$SERVER")
log "im-server $IM_PID on $ADDR (RSS at start ${IM_RSS_START} KiB)"

IM=(--addr "$ADDR" --server-pid "$IM_PID")
run "im pairs-small" "${IM[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_SMALL --window $WINDOW --body $BODY
run "im pairs-large" "${IM[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_LARGE --window $WINDOW --body $BODY
run "im fanout" "${IM[@]}" "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
# Redis subscribers acknowledge nothing; the same shape with im-server's receivers not sending
# ACK shows what the acknowledgements (a read and a row update per receiver) cost.
run "im fanout-noack" "${IM[@]}" --no-receiver-ack "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
run "im login" "${IM[@]}" "${SECONDS_ARG[@]}" login --connections $LOGIN_CONNS
run "im drain" "${IM[@]}" "${SECONDS_ARG[@]}" drain --messages $DRAIN --window 64 --body $BODY
run "im drain-devices" "${IM[@]}" "${SECONDS_ARG[@]}" drain --messages $DRAIN --window 64 --body $BODY \
    --devices $DRAIN_DEVICES
run "im idle" "${IM[@]}" "${IDLE_ARGS[@]}" idle --connections $IDLE
stop "$IM_PID"

# ---------------------------------------------------------------- im-server over TLS
# A self-signed certificate for localhost, trusted by im-bench with --tls-ca; Redis gets the
# same one below. TLS idle connections are fewer: each holds a TLS session on both sides.
CERTS="$WORK/certs"
"$ROOT/scripts/make-cert.sh" "$CERTS" localhost 127.0.0.1 >/dev/null
TLS_IDLE=$(( IDLE < 5000 ? IDLE : 5000 ))
start_im im-tls --tls-listen 127.0.0.1:0 --tls-cert "$CERTS/cert.pem" --tls-key "$CERTS/key.pem"
log "im-server $IM_PID on $TLS_ADDR (TLS)"
T=(--addr "$TLS_ADDR" --server-pid "$IM_PID" --tls --tls-ca "$CERTS/cert.pem")
run "im-tls pairs-large" "${T[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_LARGE --window $WINDOW --body $BODY
run "im-tls fanout" "${T[@]}" "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
run "im-tls login" "${T[@]}" "${SECONDS_ARG[@]}" login --connections $LOGIN_CONNS
run "im-tls idle" "${T[@]}" "${IDLE_ARGS[@]}" idle --connections $TLS_IDLE
stop "$IM_PID"

# ---------------------------------------------------------------- im-server over WebSocket
# What the browser client costs: the same frames, one per WebSocket message (--http-listen).
start_im im-ws --http-listen 127.0.0.1:0
log "im-server $IM_PID on $HTTP_ADDR (WebSocket)"
W=(--addr "$HTTP_ADDR" --server-pid "$IM_PID" --ws)
run "im-ws pairs-large" "${W[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_LARGE --window $WINDOW --body $BODY
run "im-ws fanout" "${W[@]}" "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
stop "$IM_PID"

# ---------------------------------------------------------------- Redis
REDIS_SERVER=$(command -v redis-server || true)
if [ -z "$REDIS_SERVER" ] && [ "$MODE" = full ]; then
    log "installing redis-server"
    (apt-get update && apt-get install -y redis-server) >"$WORK/apt.log" 2>&1 || log "could not install redis-server"
    REDIS_SERVER=$(command -v redis-server || true)
fi
REDIS_VERSION=none
if [ -n "$REDIS_SERVER" ]; then
    REDIS_VERSION=$("$REDIS_SERVER" --version | sed 's/^Redis server //; s/ sha=.*//')
    for setup in redis redis-streams redis-tls; do
        dir="$WORK/$setup"
        mkdir -p "$dir"
        port=$(free_port)
        listen=(--port "$port")
        tls=()
        case "$setup" in
            redis) persist=(--save '' --appendonly no) ;;
            redis-streams) persist=(--save '' --appendonly yes --appendfsync everysec) ;;
            redis-tls)
                persist=(--save '' --appendonly no)
                listen=(--port 0 --tls-port "$port" --tls-cert-file "$CERTS/cert.pem" --tls-key-file "$CERTS/key.pem"
                    --tls-ca-cert-file "$CERTS/cert.pem" --tls-auth-clients no)
                tls=(--tls --tls-ca "$CERTS/cert.pem")
                ;;
        esac
        REDIS_CMD=("${PIN_SERVER[@]}" "$REDIS_SERVER" "${listen[@]}" --bind 127.0.0.1 --protected-mode no --dir "$dir"
            "${persist[@]}" --maxclients 19500 --daemonize no --logfile "$dir/redis.log")
        quoted "${REDIS_CMD[@]}" | sed "s#$WORK#\$TMP#g" >>"$COMMANDS"
        "${REDIS_CMD[@]}" &
        rpid=$!
        STARTED_PIDS+=("$rpid")
        wait_port "$port"
        target=$setup
        [ "$setup" = redis-tls ] && target=redis
        R=(--addr "127.0.0.1:$port" --server-pid "$rpid" --target "$target" "${tls[@]}")
        if [ "$setup" = redis-tls ]; then
            run "$setup pairs-large" "${R[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_LARGE --window $WINDOW --body $BODY
            run "$setup fanout" "${R[@]}" "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
            run "$setup idle" "${R[@]}" "${IDLE_ARGS[@]}" idle --connections $TLS_IDLE
            stop "$rpid"
            continue
        fi
        run "$setup pairs-small" "${R[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_SMALL --window $WINDOW --body $BODY
        run "$setup pairs-large" "${R[@]}" "${SECONDS_ARG[@]}" pairs --pairs $PAIRS_LARGE --window $WINDOW --body $BODY
        run "$setup fanout" "${R[@]}" "${SECONDS_ARG[@]}" fanout --members $FANOUT --window $WINDOW --body $BODY
        run "$setup idle" "${R[@]}" "${IDLE_ARGS[@]}" idle --connections $IDLE
        stop "$rpid"
    done
else
    log "redis-server is not installed: skipping the Redis comparison"
fi

if [ "$MODE" = smoke ]; then
    cut -f1 "$RESULTS" | paste -sd' ' | sed 's/^/bench.sh: ran: /' >&2
    [ "$FAILED" -eq 0 ] && log "smoke passed" || log "smoke FAILED"
    exit "$FAILED"
fi

# ---------------------------------------------------------------- BENCHMARKS.md
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MEM_TOTAL=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
if [ ${#CONTAMINATED[@]} -gt 0 ]; then
    log "other work took more than $OTHER_CPU_LIMIT% of a CPU during: ${CONTAMINATED[*]}"
    OUT="$OUT.contaminated"
    FAILED=1
fi

python3 - "$RESULTS" "$COMMANDS" "$OUT" <<PY
import json, sys
results_path, commands_path, out_path = sys.argv[1:4]
runs = {}
for line in open(results_path):
    label, _, data = line.rstrip("\n").partition("\t")
    try:
        runs.setdefault(label, []).append(json.loads(data))
    except ValueError:
        runs.setdefault(label, []).append({"verified": False, "failures": ["unparsable output: " + data[:200]]})

def median(values):
    values = sorted(values)
    return values[len(values) // 2]

def merge(label, results):
    """One row per label: the median of each number over its runs (the middle run's timeline);
    verified only if every run verified; every run's failures and warnings."""
    if len(results) == 1:
        return results[0]
    merged = {"runs": len(results)}
    for key in results[0]:
        values = [r.get(key) for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = median(values)
        elif key == "verified":
            merged[key] = all(values)
        elif key in ("failures", "warnings"):
            merged[key] = [f"run {i + 1}: {x}" for i, r in enumerate(results) for x in r.get(key, [])]
        else:
            merged[key] = values[0]
    rates = [r.get("deliveries_per_s") for r in results]
    if all(isinstance(v, (int, float)) for v in rates):
        middle = sorted(range(len(results)), key=lambda i: rates[i])[len(results) // 2]
        if "timeline" in results[middle]:
            merged["timeline"] = results[middle]["timeline"]
        merged["deliveries_per_s_runs"] = rates
    return merged

rows = {label: merge(label, results) for label, results in runs.items()}
commands = [c.rstrip("\n") for c in open(commands_path)]

def get(label, key):
    r = rows.get(label)
    return None if r is None else r.get(key)

def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, int):
        return f"{v:,}" + unit
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit

def ratio(a, b):
    if a is None or b is None or b == 0 or isinstance(a, bool) or isinstance(b, bool):
        return "—"
    return f"{a / b:.2f}×"

def draw_timeline(path, series):
    """An SVG of deliveries/s (top) and p99.9 in ms (bottom) per second, one line per series of
    (name, [[deliveries, p999_us], ...], colour); nothing is written without data."""
    series = [(n, t, c) for n, t, c in series if t]
    if not series:
        return
    width, height, left, top, gap, panel = 760, 440, 70, 30, 40, 160
    seconds = max(len(t) for _, t, _ in series)
    top_max = max(v[0] for _, t, _ in series for v in t) * 1.1 or 1
    low_max = max(v[1] / 1000 for _, t, _ in series for v in t) * 1.1 or 1
    x = lambda i: left + (width - left - 20) * (i + 0.5) / seconds
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for p, (title, vmax, unit) in enumerate((("deliveries per second", top_max, ""), ("p99.9 latency per second (ms)", low_max, " ms"))):
        y0 = top + p * (panel + gap)
        parts.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{width - left - 20}" height="{panel}" fill="none" stroke="#999"/>')
        for k in range(5):
            v = vmax * k / 4
            y = y0 + panel - panel * k / 4
            label = f"{v:,.0f}" if p == 0 else f"{v:.1f}"
            parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#555">{label}</text>')
            parts.append(f'<line x1="{left}" x2="{width - 20}" y1="{y}" y2="{y}" stroke="#eee"/>')
        for name, t, colour in series:
            pts = " ".join(f"{x(i):.1f},{y0 + panel - panel * ((v[0] if p == 0 else v[1] / 1000) / vmax):.1f}" for i, v in enumerate(t))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for i in range(seconds):
        parts.append(f'<text x="{x(i):.1f}" y="{top + 2 * panel + gap + 16}" text-anchor="middle" fill="#555">{i + 1}</text>')
    for j, (name, _, colour) in enumerate(series):
        parts.append(f'<rect x="{left + 160 * j}" y="{height - 18}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{left + 160 * j + 18}" y="{height - 8}">{name}</text>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts) + "\n")

lines = []
out = lines.append
out("# Benchmarks")
out("")
contaminated = "${CONTAMINATED[*]:-}"
if contaminated:
    out(f"**Not a valid run: other work took more than ${OTHER_CPU_LIMIT}% of a CPU during {contaminated}, even")
    out("when repeated. Its ratios flatter im-server; rerun on an idle machine.**")
    out("")
out(f"Every run was measured with other work on the machine below ${OTHER_CPU_LIMIT}% of a CPU (\`other CPU\` per")
out("row below), or repeated until it was; a run that stays above is reported as contaminated instead.")
out("")
out("Written by \`scripts/bench.sh\` (rerun it to regenerate this file). im-server and each Redis run on")
out("CPU 0, im-bench on CPU 1; every server starts on a fresh temporary directory. Latency is from")
out("the send (time carried in the body) to the moment the receiving socket's bytes were read.")
out("Receivers of im-server acknowledge (ACK) the newest message of every read, as a real client")
out("does; Redis subscribers acknowledge nothing. Ratios are im-server ÷ Redis: above 1 means")
out("im-server is faster (for latency and memory, below 1 is better). CPU is in percent of one")
out("core over the measured window. A server's CPU includes its child processes (Redis forks to")
out("rewrite its append-only file); \"other\" is the rest of the machine (other processes, and")
out("interrupt work charged to no process): when it is high, both sides were starved and the")
out("absolute figures understate them; \"server CPU per delivery\" (µs of server CPU per message")
out("delivered) holds up better under such contention than any rate.")
out("")
if float("${LOAD_BEFORE}".split()[0]) > 0.5:
    out("**The machine was not idle when this run started** (load average ${LOAD_BEFORE}; busiest:")
    out("${BUSY_BEFORE}). Treat the absolute figures as a lower bound; the same-run ratios are the")
    out("better guide, and even they favour whichever side suffered less from the contention.")
    out("")
out("## Machine")
out("")
out("| | |")
out("|---|---|")
out("| CPUs (nproc) | $(nproc) |")
out("| CPU model | ${CPU_MODEL} |")
out("| kernel | $(uname -r) |")
out("| memory | ${MEM_TOTAL} |")
out("| load average before the run | ${LOAD_BEFORE} |")
out("| busiest processes before the run (CPU % since their start) | ${BUSY_BEFORE} |")
out("| ulimit -n | ${NOFILE} |")
out("| Redis | ${REDIS_VERSION} |")
out("| im-server release binary | ${IM_BINARY_BYTES} bytes |")
out("| im-server RSS right after start | ${IM_RSS_START} KiB |")
out("")
out("## Results")
out("")
out("| shape | metric | im-server | Redis pub/sub | Redis streams + AOF | ÷ pub/sub | ÷ streams |")
out("|---|---|---|---|---|---|---|")
def row(shape, label, metric, key, unit="", im_only=False):
    a = get("im " + label, key)
    b = None if im_only else get("redis " + label, key)
    c = None if im_only else get("redis-streams " + label, key)
    out(f"| {shape} | {metric} | {fmt(a, unit)} | {fmt(b, unit)} | {fmt(c, unit)} | {ratio(a, b)} | {ratio(a, c)} |")
for label, shape in (("pairs-small", "pairs ${PAIRS_SMALL} × W${WINDOW} × ${BODY} B"),
                     ("pairs-large", "pairs ${PAIRS_LARGE} × W${WINDOW} × ${BODY} B"),
                     ("fanout", "fanout ${FANOUT} members")):
    row(shape, label, "deliveries/s", "deliveries_per_s")
    row(shape, label, "latency p50", "latency_p50_us", " µs")
    row(shape, label, "latency p99", "latency_p99_us", " µs")
    row(shape, label, "latency p99.9", "latency_p999_us", " µs")
    row(shape, label, "server CPU", "server_cpu_pct", " %")
    row(shape, label, "server CPU per delivery", "server_cpu_us_per_delivery", " µs")
    row(shape, label, "bench CPU", "bench_cpu_pct", " %")
    row(shape, label, "other CPU (other processes, interrupts)", "other_cpu_pct", " %")
    row(shape, label, "verified", "verified")
for metric, key, unit in (("deliveries/s", "deliveries_per_s", ""), ("latency p99", "latency_p99_us", " µs"),
                          ("server CPU per delivery", "server_cpu_us_per_delivery", " µs"), ("verified", "verified", "")):
    a, b = get("im fanout-noack", key), get("redis fanout", key)
    out(f"| fanout ${FANOUT}, receivers send no ACK (like Redis subscribers) | {metric} | {fmt(a, unit)} | {fmt(b, unit)} | — | {ratio(a, b)} | — |")
row("idle ${IDLE} connections", "idle", "KiB per connection", "kib_per_connection")
row("idle ${IDLE} connections", "idle", "server RSS with all open", "rss_after_kib", " KiB")
row("idle ${IDLE} connections", "idle", "connections set up /s", "connections_per_s")
row("idle ${IDLE} connections", "idle", "verified", "verified")
row("login, ${LOGIN_CONNS} connections", "login", "SCRAM logins/s", "logins_per_s", im_only=True)
row("login, ${LOGIN_CONNS} connections", "login", "login p99", "login_p99_us", " µs", im_only=True)
row("login, ${LOGIN_CONNS} connections", "login", "server CPU", "server_cpu_pct", " %", im_only=True)
row("login, ${LOGIN_CONNS} connections", "login", "server CPU per login", "server_cpu_us_per_login", " µs", im_only=True)
row("drain ${DRAIN}", "drain", "delivered/s after login", "drain_msgs_per_s", im_only=True)
row("drain ${DRAIN}", "drain", "queued (stored) msgs/s", "fill_msgs_per_s", im_only=True)
row("drain ${DRAIN}", "drain", "server CPU while draining", "server_cpu_pct", " %", im_only=True)
row("drain ${DRAIN}", "drain", "server CPU per message", "server_cpu_us_per_message", " µs", im_only=True)
row("drain ${DRAIN}", "drain", "verified", "verified", im_only=True)
row("drain ${DRAIN} on ${DRAIN_DEVICES} devices", "drain-devices", "delivered/s after login, all devices", "drain_msgs_per_s", im_only=True)
row("drain ${DRAIN} on ${DRAIN_DEVICES} devices", "drain-devices", "server CPU while draining", "server_cpu_pct", " %", im_only=True)
row("drain ${DRAIN} on ${DRAIN_DEVICES} devices", "drain-devices", "server CPU per delivery", "server_cpu_us_per_message", " µs", im_only=True)
row("drain ${DRAIN} on ${DRAIN_DEVICES} devices", "drain-devices", "verified", "verified", im_only=True)
out("")
out("### Over TLS")
out("")
out("The same shapes with every connection in TLS (im-server's \`--tls-listen\`, Redis's \`--tls-port\`;")
out("one self-signed P-256 certificate; TLS 1.3 with rustls on both im-bench's side and im-server's,")
out("OpenSSL on Redis's). The plain-text figures are the rows above, from the same run; TLS ÷ plain")
out("is what TLS costs each server, so the two last columns say whether im-server pays more for it")
out("than Redis does. Idle plain text holds ${IDLE} connections, idle TLS ${TLS_IDLE}.")
out("")
out("| shape | metric | im-server TLS | Redis pub/sub TLS | ÷ pub/sub TLS | im-server plain | Redis pub/sub plain | im-server TLS ÷ plain | Redis TLS ÷ plain |")
out("|---|---|---|---|---|---|---|---|---|")
def tls_row(shape, label, metric, key, unit="", im_only=False):
    a, p = get("im-tls " + label, key), get("im " + label, key)
    b = None if im_only else get("redis-tls " + label, key)
    q = None if im_only else get("redis " + label, key)
    out(f"| {shape} | {metric} | {fmt(a, unit)} | {fmt(b, unit)} | {ratio(a, b)} | {fmt(p, unit)} | {fmt(q, unit)} | {ratio(a, p)} | {ratio(b, q)} |")
for label, shape in (("pairs-large", "pairs ${PAIRS_LARGE} × W${WINDOW} × ${BODY} B"),
                     ("fanout", "fanout ${FANOUT} members")):
    tls_row(shape, label, "deliveries/s", "deliveries_per_s")
    tls_row(shape, label, "latency p99", "latency_p99_us", " µs")
    tls_row(shape, label, "server CPU per delivery", "server_cpu_us_per_delivery", " µs")
    tls_row(shape, label, "verified", "verified")
tls_row("login, ${LOGIN_CONNS} connections", "login", "SCRAM logins/s (each a new TLS session)", "logins_per_s", im_only=True)
tls_row("login, ${LOGIN_CONNS} connections", "login", "server CPU per login", "server_cpu_us_per_login", " µs", im_only=True)
tls_row("idle (${TLS_IDLE} TLS connections)", "idle", "KiB per connection", "kib_per_connection")
tls_row("idle (${TLS_IDLE} TLS connections)", "idle", "verified", "verified")
out("")
out("### Over WebSocket")
out("")
out("The same shapes with every client on a WebSocket (\`--http-listen\`, one protocol frame per")
out("binary message, as the browser client sends them), beside raw TCP from the same run.")
out("")
out("| shape | metric | im-server WebSocket | im-server TCP | WebSocket ÷ TCP | Redis pub/sub (TCP) | WebSocket ÷ pub/sub |")
out("|---|---|---|---|---|---|---|")
def ws_row(shape, label, metric, key, unit=""):
    a, p, r = get("im-ws " + label, key), get("im " + label, key), get("redis " + label, key)
    out(f"| {shape} | {metric} | {fmt(a, unit)} | {fmt(p, unit)} | {ratio(a, p)} | {fmt(r, unit)} | {ratio(a, r)} |")
for label, shape in (("pairs-large", "pairs ${PAIRS_LARGE} × W${WINDOW} × ${BODY} B"),
                     ("fanout", "fanout ${FANOUT} members")):
    ws_row(shape, label, "deliveries/s", "deliveries_per_s")
    ws_row(shape, label, "latency p99", "latency_p99_us", " µs")
    ws_row(shape, label, "server CPU per delivery", "server_cpu_us_per_delivery", " µs")
    ws_row(shape, label, "verified", "verified")
out("")
out("## Stalls: pairs ${PAIRS_SMALL}, second by second")
out("")
out("![deliveries and p99.9 per second](" + out_path.rsplit("/", 1)[-1].replace(".md", "-timeline.svg") + ")")
out("")
out("Each measured second of the pairs ${PAIRS_SMALL} run (the median run of ${REPEAT}): deliveries in that")
out("second and the p99.9 latency of those deliveries. A stall shows as a dip in the first and a")
out("spike in the second.")
out("")
out("| | im-server | Redis pub/sub |")
out("|---|---|---|")
for key, what in (("median_second_deliveries", "median second, deliveries"),
                  ("seconds_below_80pct_of_median", "seconds below 80% of the median"),
                  ("latency_p99_us", "p99 over the window (µs)"),
                  ("latency_p999_us", "p99.9 over the window (µs)")):
    out(f"| {what} | {fmt(get('im pairs-small', key))} | {fmt(get('redis pairs-small', key))} |")
def p999_ratio(label):
    a, b = get(label, "latency_p999_us"), get(label, "latency_p99_us")
    return None if a is None or not b else a / b
out(f"| p99.9 ÷ p99 | {fmt(p999_ratio('im pairs-small'))} | {fmt(p999_ratio('redis pairs-small'))} |")
draw_timeline(out_path.replace(".md", "-timeline.svg"),
              [("im-server", get("im pairs-small", "timeline"), "#1f77b4"),
               ("Redis pub/sub", get("redis pairs-small", "timeline"), "#d62728")])
out("")
out("## Targets of issue 13")
out("")
out("| target | measured | met |")
out("|---|---|---|")
r999 = p999_ratio("im pairs-small")
a = get("im pairs-small", "latency_p999_us")
target_row = lambda name, measured, ok: out(f"| {name} | {measured} | {'—' if ok is None else ('yes' if ok else '**no**')} |")
target_row("pairs ${PAIRS_SMALL}: p99.9 ≤ 3 × p99", f"{fmt(a, ' µs')} = {fmt(r999)} × p99", None if r999 is None else r999 <= 3)
low = get("im pairs-small", "seconds_below_80pct_of_median")
target_row("pairs ${PAIRS_SMALL}: no second below 80% of the median second", f"{fmt(low)} such seconds", None if low is None else low == 0)
a, b = get("im fanout", "deliveries_per_s"), get("redis fanout", "deliveries_per_s")
target_row("fanout ${FANOUT}: ≥ 1.0 × Redis pub/sub", f"{fmt(a)} vs {fmt(b)} ({ratio(a, b)})", None if a is None or b is None else a >= b)
a = get("im fanout-noack", "deliveries_per_s")
target_row("fanout ${FANOUT}, receivers not acknowledging (as Redis's): ≥ 1.0 × Redis pub/sub", f"{fmt(a)} vs {fmt(b)} ({ratio(a, b)})", None if a is None or b is None else a >= b)
a, b, c = get("im pairs-large", "deliveries_per_s"), get("redis pairs-large", "deliveries_per_s"), get("redis-streams pairs-large", "deliveries_per_s")
target_row("pairs ${PAIRS_LARGE}: ≥ 0.75 × Redis pub/sub", f"{fmt(a)} vs {fmt(b)} ({ratio(a, b)})", None if a is None or b is None else a >= 0.75 * b)
target_row("pairs ${PAIRS_LARGE}: ≥ 2 × Redis streams + AOF", f"{fmt(a)} vs {fmt(c)} ({ratio(a, c)})", None if a is None or c is None else a >= 2 * c)
a, c = get("im pairs-large", "latency_p99_us"), get("redis-streams pairs-large", "latency_p99_us")
target_row("pairs ${PAIRS_LARGE}: p99 below Redis streams + AOF's", f"{fmt(a, ' µs')} vs {fmt(c, ' µs')}", None if a is None or c is None else a < c)
out("")
out("## Targets of issue 4")
out("")
out("| target | measured | met |")
out("|---|---|---|")
def target(name, measured, ok):
    out(f"| {name} | {measured} | {'—' if ok is None else ('yes' if ok else '**no**')} |")
def cmp(a, b, better_high=True):
    if a is None or b is None:
        return None
    return a >= b if better_high else a <= b
a, b = get("im pairs-large", "deliveries_per_s"), get("redis-streams pairs-large", "deliveries_per_s")
target("pairs ${PAIRS_LARGE}: deliveries/s ≥ 1.0 × Redis streams", f"{fmt(a)} vs {fmt(b)} ({ratio(a, b)}); {ratio(a, get('redis pairs-large', 'deliveries_per_s'))} of pub/sub", cmp(a, b))
a, b = get("im pairs-large", "latency_p99_us"), get("redis-streams pairs-large", "latency_p99_us")
target("pairs ${PAIRS_LARGE}: p99 ≤ Redis streams", f"{fmt(a, ' µs')} vs {fmt(b, ' µs')}", cmp(a, b, False))
a, b = get("im fanout", "deliveries_per_s"), get("redis fanout", "deliveries_per_s")
target("fanout ${FANOUT}: deliveries/s ≥ 1.0 × Redis pub/sub", f"{fmt(a)} vs {fmt(b)} ({ratio(a, b)})", cmp(a, b))
a = get("im idle", "kib_per_connection")
target("idle ${IDLE}: ≤ 0.7 KiB RSS per connection", fmt(a, " KiB"), cmp(a, 0.7, False))
a = get("im login", "logins_per_s")
target("login: ≥ 20,000 logins/s", fmt(a), cmp(a, 20000))
a = get("im drain", "drain_msgs_per_s")
target("drain ${DRAIN}: ≥ 300,000 msgs/s", fmt(a), cmp(a, 300000))
target("release binary ≤ 4 MiB", f"{${IM_BINARY_BYTES} / 1048576:.2f} MiB", ${IM_BINARY_BYTES} <= 4 * 1048576)
target("RSS of an idle server after start ≤ 4 MiB", f"{${IM_RSS_START} / 1024:.2f} MiB", ${IM_RSS_START} <= 4096)
notes = []
for label, r in rows.items():
    for f in r.get("failures", []):
        notes.append(f"- {label}: FAILED: {f}")
    for w in r.get("warnings", []):
        notes.append(f"- {label}: warning: {w}")
if notes:
    out("")
    out("## Failures and warnings")
    out("")
    lines.extend(notes)
out("")
out("## Commands")
out("")
out("\`\`\`")
out("scripts/bench.sh")
lines.extend(commands)
out("\`\`\`")
out("")
out("## Raw results (one JSON line per run)")
out("")
out("\`\`\`")
for label, r in rows.items():
    out(f"{label}\t{json.dumps(r, ensure_ascii=False)}")
out("\`\`\`")
open(out_path, "w").write("\n".join(lines) + "\n")
PY
log "wrote $OUT"
exit "$FAILED"
