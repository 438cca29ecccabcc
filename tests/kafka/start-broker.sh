#!/usr/bin/env bash
# Starts a single-node Apache Kafka broker (KRaft) from the jars in $1, keeping its data in $2,
# listening on 127.0.0.1:$3 (controller on $3+1); prints its pid once it accepts connections.
set -euo pipefail
LIBS="$1"; DIR="$2"; PORT="$3"; CPORT=$((PORT + 1))
mkdir -p "$DIR"
cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/logs
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
java -cp "$LIBS/*" kafka.tools.StorageTool format -t q1Sh-9_ISia_zwGINzRvyQ -c "$DIR/server.properties" > "$DIR/format.log" 2>&1
nohup java -Xmx2g -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" > "$DIR/broker.log" 2>&1 &
PID=$!
for _ in $(seq 1 900); do
  if (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "$PID"; exit 0; fi
  kill -0 "$PID" 2>/dev/null || { tail -20 "$DIR/broker.log" >&2; exit 1; }
  sleep 0.1
done
echo "the Kafka broker did not start: $DIR/broker.log" >&2; exit 1
