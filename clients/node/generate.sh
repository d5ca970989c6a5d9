#!/usr/bin/env bash
# Regenerates clients/node/generated/ from protos/ (committed; never edit it by hand).
#
#   ./generate.sh          rewrite generated/
#   ./generate.sh --check  generate into a scratch directory and fail if generated/ differs
#
# Pipeline, all from npm packages (no binary downloads): the repository's `buf` runs the local
# ts-proto plugin (TypeScript message codecs and @grpc/grpc-js client classes), then `tsc` compiles
# each .ts file to a CommonJS .js file next to it, which is what Node loads.
set -euo pipefail
cd "$(dirname "$0")"

BUF="${BUF:-../../node_modules/.bin/buf}"
if [[ ! -x "$BUF" ]]; then
  (cd ../.. && npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ ! -x node_modules/.bin/protoc-gen-ts_proto || ! -x node_modules/.bin/tsc ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

generate_into() {
  local base="$1"
  rm -rf "$base/generated"
  "$BUF" generate --template buf.gen.yaml -o "$base"
  # Plain flags instead of a tsconfig, so that --check can compile a scratch copy the same way.
  mapfile -t sources < <(find "$base/generated" -name '*.ts' | LC_ALL=C sort)
  node_modules/.bin/tsc --strict --target ES2022 --module commonjs --moduleResolution node \
    --esModuleInterop --skipLibCheck --newLine lf "${sources[@]}"
}

if [[ "${1:-}" == "--check" ]]; then
  scratch="$(mktemp -d .generate-check.XXXXXX)"
  trap 'rm -rf "$scratch"' EXIT
  generate_into "$scratch"
  if ! diff -r generated "$scratch/generated"; then
    echo "clients/node/generated/ is stale: run clients/node/generate.sh" >&2
    exit 1
  fi
  echo "clients/node/generated/ is fresh"
else
  generate_into .
fi
