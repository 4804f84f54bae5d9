// Package ratelimit holds the node's rate-limit stores: GCRA (the generic
// cell rate algorithm) state in memory or in Redis, behind
// pipeline.RateStore. The `ratelimit` built-in stage
// (internal/stages/ratelimit) and sluice.ratelimit.check in Lua
// (internal/luahost) both use the one set a node builds with NewNode, so
// every stage instance, every Lua state and every pipeline after a reload
// share the same counters.
//
// GCRA keeps one number per key, the theoretical arrival time (TAT) of
// the next event: with emission interval T = Period/Limit and tolerance
// τ = T × Burst, an event of cost n at time now is allowed when
// max(TAT, now) + n·T − now ≤ τ, and then TAT becomes max(TAT, now) + n·T.
// A key whose TAT is in the past is in the same state as a key never
// seen, which is what lets Memory forget idle keys and Redis expire them.
//
// Why not a library: the memory store is a sharded map of one int64 per
// key (golang.org/x/time/rate keeps a struct and a mutex per key and has
// no eviction, and a per-check cost near 100 ns is the target); the Redis
// store is one atomic server-side script because
// github.com/go-redis/redis_rate checks one key per round trip and cannot
// refuse a message by one limit without charging the others, which a
// message checking several keys (tenant, sender domain, client IP) needs.
// The script is GCRA as redis_rate implements it, for several keys at
// once, all or nothing, timed by the Redis server's clock so every node
// agrees. For fast keys it charges a lease of several events at once,
// which the node then spends without a round trip (lease.go): never more
// than the limit, at the cost of leased events lost when a lease expires
// unspent.
//
// What it is not: the stage (which keys, which SMTP phase, which reply)
// or the outbound shaping of deliveries (internal/delivery).
package ratelimit
