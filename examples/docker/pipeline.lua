-- The configuration the container image ships (/etc/sluice/pipeline.lua):
-- mount your own over it. State lives on the /var/lib/sluice volume.
--
--   docker run -v sluice-state:/var/lib/sluice -p 25:25 -p 587:587 -p 8025:8025 sluice
--
-- As shipped it accepts mail for example.test only and relays for nobody:
-- replace the domains, add relay_networks or authentication, and a routing
-- stage (see docs/config.md).
local sluice = require("sluice")

sluice.node { name = "sluice-1", hostname = "mx.example.test" }
sluice.local_domains { "example.test" }
sluice.spool { path = "/var/lib/sluice/spool" }
sluice.events { file = "/var/lib/sluice/events.jsonl" }

sluice.listen_smtp { addr = "0.0.0.0:25" }
sluice.listen_smtp { addr = "0.0.0.0:587" }
sluice.listen_http { addr = "0.0.0.0:8025" }

-- /healthz, /readyz and /metrics. The image's HEALTHCHECK asks
-- 127.0.0.1:9101 from inside the container; allow your Prometheus too.
sluice.listen_admin { addr = "0.0.0.0:9101", allow = { "127.0.0.1/32", "::1/128" } }
