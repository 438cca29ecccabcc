#!/usr/bin/env bash
# Fetches the Apache Kafka broker (the jars named in tests/kafka/pom.xml and their dependencies,
# from Maven Central) into $1 unless it is already there. Run it under Java 17 or newer.
set -euo pipefail
LIBS="$1"
[ -f "$LIBS/.complete" ] && exit 0
rm -rf "$LIBS"
mvn -q -B -f "$(dirname "$0")/pom.xml" dependency:copy-dependencies \
  -DoutputDirectory="$LIBS" -DincludeScope=runtime
touch "$LIBS/.complete"
