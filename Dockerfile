# syntax=docker/dockerfile:1
#
# Sluice container image: a static binary on distroless (no shell, no
# package manager, runs as uid 65532). See docs/operating.md.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse HEAD) -t sluice .
#   docker run -d --name sluice -v sluice-state:/var/lib/sluice \
#              -p 25:25 -p 587:587 -p 8025:8025 sluice
#
# Mount your configuration over /etc/sluice/pipeline.lua. Reload it with
#   docker exec sluice sluice reload -socket /var/lib/sluice/spool.sock

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
COPY internal/third_party/go-smtp/go.mod internal/third_party/go-smtp/go.sum internal/third_party/go-smtp/
COPY internal/third_party/gopher-lua/go.mod internal/third_party/gopher-lua/go.sum internal/third_party/gopher-lua/
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/usr/bin/sluice ./cmd/sluice \
 && mkdir -p /out/var/lib/sluice /out/etc/sluice \
 && cp examples/docker/pipeline.lua /out/etc/sluice/pipeline.lua \
 && /out/usr/bin/sluice check -c /out/etc/sluice/pipeline.lua

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/usr/bin/sluice /usr/bin/sluice
COPY --from=build /out/etc/sluice /etc/sluice
COPY --from=build --chown=65532:65532 /out/var/lib/sluice /var/lib/sluice
# The spool, the events file and the API keys: keep them across upgrades.
VOLUME ["/var/lib/sluice"]
WORKDIR /var/lib/sluice
# SMTP, submission, SMTPS, HTTP API, admin (metrics and health). Binding
# ports below 1024 as a non-root user works because Docker (20.10+) sets
# net.ipv4.ip_unprivileged_port_start=0 in the container's namespace.
EXPOSE 25 465 587 8025 9101
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/bin/sluice", "health", "--url", "http://127.0.0.1:9101/healthz"]
# SIGTERM lets sessions and deliveries finish (serve -shutdown-grace);
# give `docker stop` as long: docker stop -t 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/sluice"]
CMD ["serve", "-c", "/etc/sluice/pipeline.lua", "-log-format", "json", "-shutdown-grace", "50s"]
