# The everyday loop. `just` alone lists the recipes.

default:
    @just --list

# Every release binary (discovery, app, gateway, up, loadtest) in one cargo command. The recipes below all build through it: one feature set, one copy of each dependency, so after one of them has built the others compile nothing (docs/development.md).
build:
    cargo build --release --workspace --bins

# Build in release and run everything: discovery :8500, apps :8080-8082, gateway :8000 (console and admin :8001). Ctrl-C stops it all. Arguments pass on, e.g. `just up --apps 5 --gateway-port 9000`, or `just up --free-ports` for any free ports, or `just up --tls` for HTTPS with a local CA (`just up --help`).
up *ARGS: build
    target/release/up {{ARGS}}

# Stop the system `just up` runs (from any terminal) and wait until every process has exited. Builds first like the others (a second or so when `just up` built; cargo shows what it compiles otherwise).
down *ARGS: build
    target/release/up down {{ARGS}}

# Past one machine, on loopback: 3 etcd members, 2 discovery replicas sharing one registry, 2 gateways sharing :8000, 3 apps. Ctrl-C stops it all. Needs etcd (Debian: apt-get install etcd-server).
cluster: build
    bash cluster/run.sh

# POST load through the running system's gateway; arguments pass on, e.g. `just loadtest --duration 5s --chaos kill`.
loadtest *ARGS: build
    target/release/loadtest {{ARGS}}

# The test suite, as CI runs it. Installs what the tests drive when it is missing (Debian's chromium for the consoles, etcd-server for the cluster tests, python3 for the gateway's TLS reload test).
test:
    bash .ci/install-chromium
    bash .ci/install-systemd
    bash .ci/install-etcd
    bash .ci/install-prometheus
    bash .ci/install-python3
    cargo test --workspace --no-fail-fast

# Gateway vs nginx and HAProxy, discovery at 1,000 instances, load generator vs wrk: results under bench/.
bench:
    bash bench/cores.sh
    bash bench/run.sh
    cargo bench --profile perf -p discovery --bench registry
    cargo bench --profile perf -p discovery --bench flood
    bash bench/drip.sh
    rm -f bench/results-loadgen.md
    LOADGEN_OUT=bench/results-loadgen.md bash bench/loadgen.sh
    LOADGEN_OUT=bench/results-loadgen.md LOADGEN_PIN=1 bash bench/loadgen.sh

# Format everything.
fmt:
    cargo fmt --all

# What CI checks before the tests: formatting and clippy.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run

# Release archive target/dist/rr-gateway-<version>-<target>.tar.gz: the binaries (one release build), example configs, systemd units, container files, LICENSE, README.md and docs/ (docs/deploy.md).
dist:
    bash deploy/dist.sh
