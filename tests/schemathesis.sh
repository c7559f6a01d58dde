#!/usr/bin/env bash
# Fuzzes a running `balsa serve` from its own OpenAPI document (GET /openapi.json) with
# schemathesis: every documented operation, generated valid and invalid requests, checking
# for server errors (5xx other than the documented 503/504), undocumented status codes,
# wrong content types and responses that break the schema. Bounded: few examples per
# operation, a fixed seed, a time limit; nothing written into the source tree.
# Usage: tests/schemathesis.sh PORT   (exit 0: no problem found)
set -euo pipefail
port=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/balsa_schemathesis.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
exec timeout 150 schemathesis --config-file "$here/schemathesis.toml" run \
    "http://127.0.0.1:$port/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples 6 --max-time 50 --seed 1 --generation-database none \
    --request-timeout 20 --no-color
