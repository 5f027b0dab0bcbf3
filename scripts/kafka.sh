#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for development, tests and CI.
#   scripts/kafka.sh up | down | stop | start | status | jars
# (stop/start keep the data: a broker restart, as the chaos run needs)
# Jars come from Maven Central once, into .cache/kafka/<version>/libs, and are reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="2.24.3"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx1g}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
CACHE="$ROOT/.cache/kafka/$KAFKA_VERSION"
LIBS="$CACHE/libs"
RUN="${KAFKA_RUN_DIR:-$ROOT/.run/kafka-$KAFKA_PORT}"
PIDFILE="$RUN/kafka.pid"
LOG="$RUN/broker.log"
# Extra broker settings (one key=value per line), e.g. the SASL/SSL test's listeners.
KAFKA_EXTRA_CONFIG="${KAFKA_EXTRA_CONFIG:-}"
# Listeners reached through a TCP proxy each (the network-fault tests, docs/proof.md):
# comma-separated LISTEN_PORT:ADVERTISED_PORT pairs. Listener PROXIED<i> binds 127.0.0.1 on
# the first port and tells its clients, in metadata, to come back through the second (the
# proxy's), so every connection of a client bootstrapped through a proxy crosses that proxy.
KAFKA_PROXIED_LISTENERS="${KAFKA_PROXIED_LISTENERS:-}"
# Extra arguments for the storage format (split on whitespace, no globbing), e.g. the SCRAM
# users of the SASL test: --add-scram SCRAM-SHA-512=[name=alice,password=...]
read -r -a KAFKA_FORMAT_ARGS <<< "${KAFKA_FORMAT_ARGS:-}"

JVM=(java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true
     "-Dlog4j2.configurationFile=$RUN/log4j2.properties" -cp "$LIBS/*")

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_java() {
  if ! command -v java >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "java not found; installing Debian's openjdk-17-jre-headless"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null) || true
  fi
  command -v java >/dev/null || die "java not found. Install Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless) and retry."
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  [ "${major:-0}" -ge 17 ] || die "Java ${major:-?} found; Kafka $KAFKA_VERSION needs Java 17+. Install openjdk-17 and retry."
}

fetch_jars() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || {
    say "Maven not found; installing Debian's maven package"
    (apt-get update -qq && apt-get install -y -qq maven >/dev/null) || die "could not install maven; install it (apt-get install maven) and retry"
  }
  say "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once)"
  mkdir -p "$CACHE"
  cat > "$CACHE/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.loyalty-consumer</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$LIBS.tmp"
  if ! mvn -q -B -f "$CACHE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS.tmp" -DincludeScope=runtime >"$CACHE/mvn.log" 2>&1; then
    tail -20 "$CACHE/mvn.log" >&2
    die "could not resolve the Kafka jars from Maven Central (log: $CACHE/mvn.log). Check network access to Maven Central and retry."
  fi
  rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS" && touch "$LIBS/.complete"
  say "$(ls "$LIBS" | wc -l) jars cached"
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ready() { python3 "$ROOT/scripts/kafka_ready.py" "127.0.0.1:$KAFKA_PORT" 2>/dev/null; }

port_taken() { python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
# As the broker binds: a port held only by TIME_WAIT connections of a previous run is free.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

# The proxied listeners as "name listen_port advertised_port" lines.
proxied_listeners() {
  [ -n "$KAFKA_PROXIED_LISTENERS" ] || return 0
  local pair pairs i=0
  IFS=',' read -r -a pairs <<< "$KAFKA_PROXIED_LISTENERS"
  for pair in "${pairs[@]}"; do
    [[ "$pair" =~ ^[[:space:]]*([0-9]+):([0-9]+)[[:space:]]*$ ]] \
      || die "KAFKA_PROXIED_LISTENERS: '$pair' is not LISTEN_PORT:ADVERTISED_PORT (e.g. 29101:39101,29102:39102)"
    echo "PROXIED$i ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
    i=$((i + 1))
  done
}

write_config() {
  mkdir -p "$RUN/data"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL"
  local name port proxy
  while read -r name port proxy; do
    listeners+=",$name://127.0.0.1:$port"
    advertised+=",$name://127.0.0.1:$proxy"
    protocols+=",$name:PLAINTEXT"
  done < <(proxied_listeners)
  cat > "$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$RUN/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
transaction.abort.timed.out.transaction.cleanup.interval.ms=5000
log.flush.interval.messages=9223372036854775807
PROPS
  if [ -n "$KAFKA_EXTRA_CONFIG" ]; then printf '%s\n' "$KAFKA_EXTRA_CONFIG" >> "$RUN/server.properties"; fi
  cat > "$RUN/log4j2.properties" <<L4J
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
L4J
}

cmd_up() {
  need_java
  fetch_jars
  if is_running && ready; then say "already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  if is_running; then say "a broker process exists but does not answer; restarting it"; cmd_down; fi
  if port_taken "$KAFKA_PORT"; then
    die "port $KAFKA_PORT on 127.0.0.1 is already in use by another process. Stop it, or pick another port: KAFKA_PORT=19092 make kafka-up"
  fi
  if port_taken "$KAFKA_CONTROLLER_PORT"; then
    die "controller port $KAFKA_CONTROLLER_PORT on 127.0.0.1 is already in use. Set KAFKA_CONTROLLER_PORT to a free port and retry."
  fi
  proxied_listeners >/dev/null  # in this shell, so that a malformed value stops the script
  local name port proxy
  while read -r name port proxy; do
    if port_taken "$port"; then
      die "port $port of proxied listener $name (KAFKA_PROXIED_LISTENERS) is already in use on 127.0.0.1. Pick free ports and retry."
    fi
  done < <(proxied_listeners)
  rm -rf "$RUN" && write_config
  # A random cluster id (base64 of 16 bytes). Its first byte's top bit is cleared so that it
  # never starts with "-": the format tool then read it as an option and failed, 1 run in 64.
  local cluster_id
  cluster_id="$(python3 -c 'import base64,uuid;b=bytearray(uuid.uuid4().bytes);b[0]&=0x7F;print(base64.urlsafe_b64encode(bytes(b)).decode().rstrip("="))')"
  "${JVM[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
      -c "$RUN/server.properties" ${KAFKA_FORMAT_ARGS[@]+"${KAFKA_FORMAT_ARGS[@]}"} >"$RUN/format.log" 2>&1 || { cat "$RUN/format.log" >&2; die "formatting the storage failed (see above)"; }
  launch
}

launch() {
  say "starting broker on 127.0.0.1:$KAFKA_PORT (log: $LOG)"
  nohup setsid "${JVM[@]}" kafka.Kafka "$RUN/server.properties" >"$RUN/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  local started=$SECONDS
  until ready; do
    if ! is_running; then
      say "broker exited during start-up; last lines of its logs:"
      tail -25 "$RUN/stdout.log" "$LOG" 2>/dev/null >&2 || true
      die "the broker did not start (see the log lines above)"
    fi
    if (( SECONDS - started > KAFKA_START_TIMEOUT )); then
      say "broker not ready after ${KAFKA_START_TIMEOUT}s; last lines of its logs:"
      tail -25 "$RUN/stdout.log" "$LOG" 2>/dev/null >&2 || true
      cmd_stop
      die "the broker did not become ready within ${KAFKA_START_TIMEOUT}s (raise KAFKA_START_TIMEOUT on a slow machine)"
    fi
    sleep 0.5
  done
  say "ready on 127.0.0.1:$KAFKA_PORT after $((SECONDS - started))s"
}

# Stop the process but keep the data and configuration (a restart, not a reset).
cmd_stop() {
  if is_running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    say "stopped (pid $pid)"
  fi
}

cmd_start() {
  [ -f "$RUN/server.properties" ] || die "no broker data yet: run 'make kafka-up' first"
  if is_running && ready; then say "already running"; return 0; fi
  launch
}

cmd_down() {
  cmd_stop
  rm -rf "$RUN"
}

cmd_status() {
  if is_running && ready; then say "running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PIDFILE"))"; else say "not running"; return 1; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  stop) cmd_stop ;;
  start) need_java; fetch_jars; cmd_start ;;
  status) cmd_status ;;
  jars) need_java; fetch_jars ;;
  *) echo "usage: $0 up|down|status|jars" >&2; exit 2 ;;
esac
