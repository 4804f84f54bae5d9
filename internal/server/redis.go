package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-mta/sluice/internal/config"
	"github.com/sluice-mta/sluice/internal/logx"
	"github.com/sluice-mta/sluice/pipeline"
)

// NewRedis builds the client of sluice.redis (nil, nil when the
// configuration declares none). It does not connect: go-redis dials on
// the first command, so a Redis that is down does not stop `check` or
// `serve`; each user applies its own rule for an unreachable Redis.
func NewRedis(cfg *config.Config) (*pipeline.Redis, error) {
	r := cfg.Redis
	if r == nil {
		return nil, nil
	}
	o := &redis.Options{
		Addr: r.Addr, Username: r.Username, Password: r.Password, DB: r.DB,
		DialTimeout: r.DialTimeout, ReadTimeout: r.Timeout, WriteTimeout: r.Timeout,
		PoolSize: r.PoolSize,
		// One attempt: a caller on the SMTP path must not wait through
		// go-redis's default three retries with backoff.
		MaxRetries: -1,
		// RESP3 hello and client-info commands are skipped: plain RESP2
		// works with every Redis and Redis-compatible server.
		Protocol: 2, DisableIdentity: true,
	}
	if r.TLS != nil {
		t, err := r.TLS.Config("redis.tls")
		if err != nil {
			return nil, fmt.Errorf("%s: sluice.redis: %w", cfg.File, err)
		}
		o.TLSConfig = t
	}
	return &pipeline.Redis{Client: redis.NewClient(o), Prefix: r.KeyPrefix, Timeout: r.Timeout, RateLease: r.RateLimitLease}, nil
}

func closeRedis(r *pipeline.Redis) {
	if r != nil {
		_ = r.Client.Close()
	}
}

// redisLogger sends go-redis's own messages (a failed dial, a pool
// problem) to the node's structured log, one line per kind of message per
// 10 s, instead of go-redis's default unstructured lines on stderr.
type redisLogger struct {
	log     *slog.Logger
	sampler *logx.Sampler
}

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	ok, n := l.sampler.Allow(format)
	if !ok {
		return
	}
	l.log.Warn("redis client: "+fmt.Sprintf(format, v...), "similar_suppressed", n)
}

// useRedisLogger makes log go-redis's logger. go-redis has one logger per
// process; the last node built sets it.
func useRedisLogger(log *slog.Logger) {
	redis.SetLogger(redisLogger{log: log.With("component", "redis"), sampler: logx.NewSampler(10 * time.Second)})
}
