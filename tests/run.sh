#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing (reusing ~/.cache/tributary
# when it exists), builds, and runs unit tests, sqllogictest suites and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
mkdir -p "$CACHE"
# One target directory for the quick start (`cargo run`, which builds in ./target) and the tests,
# so a newcomer builds the dependencies once. A fresh clone with no ./target yet links it to the
# cache, so CI runs on the same machine reuse one warm build (design.md section 7).
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ ! -e target ]; then
  mkdir -p "$CACHE/target"
  ln -s "$CACHE/target" target
fi

# System packages: psql (the real client binary), PostgreSQL server binaries, a C toolchain for
# librdkafka, and Java with Maven for Apache Kafka.
need_apt=()
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v make >/dev/null || need_apt+=(make)
command -v gcc >/dev/null || need_apt+=(gcc)
# librdkafka's TLS links the system's OpenSSL.
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# openssl: the TLS tests make a test CA and certificates with it.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# Java and Maven: the Apache Kafka broker the Kafka tests run against.
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
# pgjdbc, the driver JDBC tools (DBeaver, DataGrip, Metabase) use: the catalog tests' Java probe.
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
# PostgreSQL server binaries: the CDC tests start throwaway clusters with initdb/pg_ctl.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
# promtool, Prometheus's checker of the /metrics exposition (Debian ships it in prometheus).
command -v promtool >/dev/null || need_apt+=(prometheus)
# Headless Chromium and its WebDriver: the console tests drive the real browser.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need_apt[@]}"
fi

# Independent readers and clients: the deltalake package, psycopg 3 and 2, asyncpg, SQLAlchemy and
# pandas, Selenium for the console tests, fastavro for Avro messages and confluent-kafka's schema
# registry client (its avro extra), in a venv we reuse.
VENV="$CACHE/venv"
PY_PKGS="deltalake==1.2.1 pyarrow psycopg[binary] asyncpg confluent-kafka[avro] sqlalchemy pandas psycopg2-binary selenium==4.51.0 fastavro"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pkgs" 2>/dev/null)" != "$PY_PKGS" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $PY_PKGS
  echo "$PY_PKGS" > "$VENV/.pkgs"
fi
export TRIBUTARY_PYTHON="$VENV/bin/python"

# Apache Kafka for the Kafka tests: the broker's jars from Maven Central, fetched once and reused
# (Java 17 is on the machine); each test starts its own single-node KRaft broker from them.
export KAFKA_LIBS="$CACHE/kafka-4.1.1/libs"
bash tests/kafka/install.sh "$KAFKA_LIBS"
# A Confluent-compatible schema registry for the Avro tests: Apicurio Registry, built once from
# Maven Central artifacts; the tests start it on a free port.
export SCHEMA_REGISTRY_HOME="$CACHE/apicurio-registry-2.4.2"
bash tests/registry/install.sh "$SCHEMA_REGISTRY_HOME"

cargo build --tests --bins
# Lints: warnings fail the run (skipped where the clippy component is not installed).
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -- -D warnings
fi
cargo test --workspace --no-fail-fast -- --test-threads=2
