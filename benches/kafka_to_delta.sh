#!/usr/bin/env bash
# Kafka -> Delta throughput beside the Python confluent-kafka consumer alone on the same topic.
# Starts an Apache Kafka broker (single-node KRaft, jars from Maven Central), produces N JSON records over 4 partitions, then times
#   (a) a confluent-kafka consumer reading them all, and
#   (b) `tributary run` with a mode = 'batch' pipeline from the topic into Delta (release build),
#   (c) the same from the topic into another topic, exactly once (one Kafka transaction per
#       checkpoint) and (d) at least once (no transactions),
# each under /usr/bin/time -v. Usage: N=2000000 bash benches/kafka_to_delta.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2000000}"
CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
# File sources and sinks read and write under the benchmarks' work directories (README: Security).
export TRIBUTARY_ALLOW_PATH="$CACHE/bench:$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
PY="${TRIBUTARY_PYTHON:-$CACHE/venv/bin/python}"
KAFKA_LIBS="${KAFKA_LIBS:-$CACHE/kafka-4.1.1/libs}"
bash tests/kafka/install.sh "$KAFKA_LIBS"
WORK="$CACHE/bench/kafka"; rm -rf "$WORK"; mkdir -p "$WORK"
cargo build --release --bin tributary >&2
BIN="$CARGO_TARGET_DIR/release/tributary"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BROKER=$(bash tests/kafka/start-broker.sh "$KAFKA_LIBS" "$WORK/broker" "$PORT"); trap 'kill $BROKER' EXIT
"$PY" - "127.0.0.1:$PORT" "$N" <<'PY'
import sys, json
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import Producer
b, n = sys.argv[1], int(sys.argv[2])
admin = AdminClient({'bootstrap.servers': b})
for f in admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in ('bench', 'copy_eo', 'copy_al')]).values(): f.result(30)
p = Producer({'bootstrap.servers': b, 'linger.ms': 50, 'queue.buffering.max.messages': 2000000})
for i in range(n):
    p.produce('bench', value=json.dumps({"id": i, "customer": "c%d" % (i % 1000), "amount": (i * 7919) % 100000 / 100, "note": "order number %d" % i}), key=str(i))
    if i % 10000 == 0: p.poll(0)
p.flush(120)
PY
cat > "$WORK/consume.py" <<'PY'
import sys
from confluent_kafka import Consumer
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'bench', 'auto.offset.reset': 'earliest'})
c.subscribe(['bench']); n, want = 0, int(sys.argv[2])
while n < want:
    for m in c.consume(10000, 1.0):
        if not m.error(): n += 1
c.close(); print(n)
PY
cat > "$WORK/load.sql" <<SQL
CREATE SOURCE bench (id BIGINT, customer TEXT, amount DOUBLE, note TEXT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:$PORT', topic = 'bench');
CREATE SINK lake WITH (connector = 'delta', path = '$WORK/lake');
CREATE PIPELINE load WITH (mode = 'batch', checkpoint_interval = '5s') AS INSERT INTO lake SELECT * FROM bench;
SQL
for delivery in exactly_once at_least_once; do
  topic=copy_$( [ $delivery = exactly_once ] && echo eo || echo al )
  cat > "$WORK/relay-$delivery.sql" <<SQL
CREATE SOURCE bench (id BIGINT, customer TEXT, amount DOUBLE, note TEXT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:$PORT', topic = 'bench');
CREATE SINK copy WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:$PORT', topic = '$topic', key = 'id', delivery = '$delivery');
CREATE PIPELINE relay WITH (mode = 'batch', checkpoint_interval = '5s') AS INSERT INTO copy SELECT * FROM bench;
SQL
done
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" > "$WORK/$label.out" 2> "$WORK/$label.time"
  local wall cpu rss
  wall=$(grep 'Elapsed (wall clock)' "$WORK/$label.time" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  cpu=$(awk '/User time|System time/ {s+=$NF} END {print s}' "$WORK/$label.time")
  rss=$(grep 'Maximum resident' "$WORK/$label.time" | awk '{print $NF}')
  python3 -c "print(f'| $label | {$N/$wall:,.0f} | {$N/$cpu:,.0f} | {$rss/1024:.0f} |')"
}
echo "| reader ($N JSON records, 4 partitions, Apache Kafka 4.1.1) | events/s | events per CPU-s | peak RSS MB |"
echo "|---|---|---|---|"
measure confluent-kafka-consumer "$PY" "$WORK/consume.py" "127.0.0.1:$PORT" "$N"
measure tributary-kafka-to-delta "$BIN" run "$WORK/load.sql" --data-dir "$WORK/data" --quiet
grep -o 'completed — [0-9]* rows in, [0-9]* rows out' "$WORK/tributary-kafka-to-delta.time" >&2
for delivery in exactly_once at_least_once; do
  measure "tributary-kafka-to-kafka-$delivery" "$BIN" run "$WORK/relay-$delivery.sql" --data-dir "$WORK/data-$delivery" --quiet
  grep -o 'completed — [0-9]* rows in, [0-9]* rows out' "$WORK/tributary-kafka-to-kafka-$delivery.time" >&2
done
