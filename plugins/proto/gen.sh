#!/usr/bin/env bash
# Generates the Go code of the plugin protocol into OUT (default: the
# repository). Needs protoc (Debian: protobuf-compiler) and the two Go
# plugins, installed by `make proto-tools`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.}"
export PATH="$HOME/go/bin:$(go env GOPATH)/bin:$PATH"
protoc -I . \
  --go_out="$out" --go_opt=module=github.com/sluice-mta/sluice \
  --go-grpc_out="$out" --go-grpc_opt=module=github.com/sluice-mta/sluice \
  plugins/proto/stage/v1/stage.proto
