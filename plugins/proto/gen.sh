#!/usr/bin/env bash
# Generates the Go code of the plugin protocol into OUT (default: the
# repository). Needs protoc (Debian: protobuf-compiler) and the three Go
# plugins, installed by `make proto-tools`. The vtproto plugin
# (planetscale/vtprotobuf) adds reflection-free MarshalVT/UnmarshalVT/SizeVT
# methods, which plugins/sdk's codec uses on both sides of the connection.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.}"
export PATH="$HOME/go/bin:$(go env GOPATH)/bin:$PATH"
protoc -I . \
  --go_out="$out" --go_opt=module=github.com/sluice-mta/sluice \
  --go-grpc_out="$out" --go-grpc_opt=module=github.com/sluice-mta/sluice \
  --go-vtproto_out="$out" --go-vtproto_opt=module=github.com/sluice-mta/sluice,features=marshal+unmarshal+unmarshal_unsafe+size \
  plugins/proto/stage/v1/stage.proto
