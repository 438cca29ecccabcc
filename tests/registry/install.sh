#!/usr/bin/env bash
# Builds Apicurio Registry 2.4.2.Final, a Confluent-compatible schema registry (API under
# /apis/ccompat/v7), into $1 unless it is already there: $1/registry-runner.jar and $1/lib/.
# Everything comes from Maven Central (tests/registry/pom.xml, settings.xml); needs mvn and Java 17.
# Why 2.4.2.Final: the newest release whose modules Maven Central serves in full (3.x and
# 2.5-2.6 lack io.apicurio:apicurio-registry-schema-util-provider).
set -euo pipefail
OUT="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
[ -f "$OUT/.complete" ] && exit 0
rm -rf "$OUT"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
cp "$HERE/pom.xml" "$BUILD/pom.xml"
mvn -q -B -s "$HERE/settings.xml" -f "$BUILD/pom.xml" -DskipTests package
# The app's own settings make a Quarkus legacy jar: a runner jar whose manifest names lib/*.jar.
mkdir -p "$OUT"
cp "$BUILD/target/apicurio-registry-runner-2.4.2-runner.jar" "$OUT/registry-runner.jar"
cp -r "$BUILD/target/lib" "$OUT/lib"
touch "$OUT/.complete"
