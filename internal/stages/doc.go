// Package stages holds Sluice's built-in pipeline stages, one package per
// kind (internal/stages/KIND). Each registers itself with
// pipeline.Register from init; internal/server imports every kind (one
// file per kind, builtin_KIND.go), so `serve`, `check` and the tests see
// the same set. Each kind's options are documented in docs/config.md's
// table of built-ins and on the kind's own page.
package stages
