#!/usr/bin/env bash
# Property-based tests of the server API against its OpenAPI document
# (spec/openapi.json, generated from proto/switchboard/v1/api.proto):
#
#   1. a Python venv with schemathesis and openapi-spec-validator (PyPI, pinned
#      below; installed once into $SCHEMATHESIS_VENV, default
#      ~/.cache/switchboard/schemathesis-venv);
#   2. openapi-spec-validator on spec/openapi.json (structurally valid OpenAPI);
#   3. `switchboard serve` (debug build) on a free loopback port, with a
#      temporary config holding a random API key and secret;
#   4. smoke checks: the served document equals spec/openapi.json, both API
#      key headers work, no key is 401;
#   5. schemathesis against http://127.0.0.1:PORT/api/v1/openapi.json:
#      positive requests (examples, coverage and fuzzing phases), then
#      negative ones (fuzzing), each with the checks not_a_server_error,
#      status_code_conformance, content_type_conformance,
#      response_schema_conformance and ignored_auth;
#   6. the server must still be running and must not have panicked.
#
# Any failure exits non-zero. Needs python3 (with venv), cargo, and PyPI for
# the first install; nothing else leaves the machine.
#
#   scripts/schemathesis.sh                  the full run
#   scripts/schemathesis.sh --validate-only  steps 1 and 2 only
#
# Environment:
#   SCHEMATHESIS_VENV           venv location
#   SCHEMATHESIS_MAX_EXAMPLES   test cases per operation and phase (default 50)
#   SCHEMATHESIS_TIMEOUT        hard limit per schemathesis run, seconds (default 600)
#   SCHEMATHESIS_SEED           fixed seed, to reproduce a run
#   SCHEMATHESIS_KEEP=1         keep the work directory (config, logs, reports)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

schemathesis_version=4.32.5
validator_version=0.9.0
venv=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard/schemathesis-venv}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-50}
run_timeout=${SCHEMATHESIS_TIMEOUT:-600}
seed=${SCHEMATHESIS_SEED:-}

validate_only=false
case "${1:-}" in
    "") ;;
    --validate-only) validate_only=true ;;
    *)
        echo "usage: $0 [--validate-only]" >&2
        exit 2
        ;;
esac

step() {
    printf '\n==== schemathesis.sh: %s\n' "$*"
}

# 1. The venv, (re)installed when missing or when the pins change.
pins="schemathesis==$schemathesis_version openapi-spec-validator==$validator_version"
stamp=$venv/.switchboard-pins
if [[ ! -x $venv/bin/schemathesis || ! -x $venv/bin/openapi-spec-validator ||
    "$(cat "$stamp" 2>/dev/null)" != "$pins" ]]; then
    step "installing $pins into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv"; then
        echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # $pins is a list of requirements
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pins
    echo "$pins" >"$stamp"
fi
"$venv/bin/schemathesis" --version
python=$venv/bin/python

# 2. The committed document is valid OpenAPI.
step "openapi-spec-validator spec/openapi.json"
"$venv/bin/openapi-spec-validator" "$root/spec/openapi.json"
if $validate_only; then
    exit 0
fi

# 3. A server with a random API key on a free loopback port.
step "building switchboard"
cargo build --locked --quiet --bin switchboard
target_dir=$(cargo metadata --format-version 1 --no-deps |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
server_bin=$target_dir/debug/switchboard

work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-schemathesis.XXXXXX")
server_pid=
status=0
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ ${SCHEMATHESIS_KEEP:-} == 1 ]]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=$("$python" -c 'import secrets; print(secrets.token_hex(16))')
secret=$("$python" -c 'import secrets; print(secrets.token_hex(32))')
base=http://127.0.0.1:$port

cat >"$work/config.toml" <<EOF
# Written by scripts/schemathesis.sh for one run.
listen = "127.0.0.1:$port"
# Every namespace exists (default_room), so random room names get through to
# the operations instead of stopping at "unknown namespace".
strict_namespaces = false

[auth]
hmac_secret = "$secret"

[api]
keys = ["$key"]

# The examples' rooms (project:42): history and presence on.
[namespaces.project]
history_size = 100
history_ttl = "10m"
presence = true
join_leave = true
EOF

step "starting switchboard serve on $base"
env -u SWITCHBOARD_CONFIG -u SWITCHBOARD_LISTEN -u SWITCHBOARD_SECRET RUST_LOG="${RUST_LOG:-info}" \
    "$server_bin" serve --config "$work/config.toml" >"$work/server.log" 2>&1 &
server_pid=$!

server_log_tail() {
    echo "---- last 80 lines of the server log"
    tail -n 80 "$work/server.log" || true
}

# 4. Health, then smoke checks of the API edge.
if ! "$python" - "$base" "$server_pid" <<'EOF'; then
import os, sys, time, urllib.request
base, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited before it was healthy")
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as reply:
            if reply.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("the server did not become healthy within 60 s")
    time.sleep(0.2)
EOF
    server_log_tail
    exit 1
fi

if ! "$python" - "$base" "$key" "$root/spec/openapi.json" <<'EOF'; then
import json, sys, urllib.error, urllib.request
base, key, committed = sys.argv[1], sys.argv[2], sys.argv[3]

def call(method, headers):
    request = urllib.request.Request(
        base + "/api/v1/" + method, data=b"{}", method="POST",
        headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)

with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=10) as reply:
    served = json.load(reply)
with open(committed) as f:
    if served != json.load(f):
        sys.exit("the served document differs from spec/openapi.json (rebuild, or bless the file)")
for headers in ({"X-API-Key": key}, {"Authorization": "apikey " + key}):
    status, body = call("info", headers)
    if status != 200 or "version" not in body:
        sys.exit(f"info with {list(headers)}: {status} {body}")
for headers in ({}, {"X-API-Key": key + "x"}):
    status, body = call("info", headers)
    if status != 401 or body.get("code") != 101:
        sys.exit(f"info with {list(headers) or 'no key'}: expected 401/101, got {status} {body}")
print("smoke checks passed: document served, both key headers accepted, no key refused")
EOF
    server_log_tail
    exit 1
fi

# 5. schemathesis. It runs in the work directory: it writes a cache there.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth
common=(
    "$base/api/v1/openapi.json"
    --header "X-API-Key: $key"
    --generation-with-security-parameters false
    --generation-database none
    --checks "$checks"
    --max-examples "$max_examples"
    --request-timeout 10
    --workers 1
    --no-color
)
if [[ -n $seed ]]; then
    common+=(--seed "$seed")
fi

run_schemathesis() {
    local name=$1
    shift
    step "schemathesis ($name): $*"
    local rc=0
    (cd "$work" && timeout --kill-after=10 "$run_timeout" "$venv/bin/schemathesis" run "${common[@]}" \
        --report junit --report-junit-path "$work/junit-$name.xml" "$@") || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "error: schemathesis ($name) exceeded SCHEMATHESIS_TIMEOUT=${run_timeout}s" >&2
    fi
    if ((rc != 0)); then
        status=1
    fi
}

run_schemathesis positive --mode positive --phases examples,coverage,fuzzing
run_schemathesis negative --mode negative --phases fuzzing

# 6. The server survived and never panicked.
step "server health after the run"
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "error: the server exited during the run" >&2
    status=1
fi
if grep -n "panicked" "$work/server.log"; then
    echo "error: the server panicked" >&2
    status=1
fi
if ((status != 0)); then
    server_log_tail
    echo "schemathesis.sh: FAILED"
    exit 1
fi
echo "schemathesis.sh: passed (no server errors, no schema violations)"
