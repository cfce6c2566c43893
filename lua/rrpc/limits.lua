-- Every limit and default of rrpc, in one place. The C core receives these values (it
-- holds none of its own); the option checker (rrpc.options) reads the ranges from here.
local limits = {}

-- The platform
limits.API_VERSION = "2018-01-20"
limits.DEFAULT_REGION = "cn-shanghai"
limits.MAX_PAYLOAD = 256 * 1024            -- the platform's MQTT message limit, in bytes
limits.RRPC_TIMEOUT = { min = 1000, max = 8000, default = 5000 } -- RRpc's Timeout, ms
limits.QUOTA_QPS = 1000                    -- RRpc calls per second per account

-- A client's connections (rrpc.new)
limits.CONNECT_TIMEOUT = { min = 1, max = 600000, default = 5000 }   -- ms
limits.TIMEOUT_MARGIN = { min = 0, max = 600000, default = 2000 }    -- ms after Timeout
-- The platform drops pooled connections after about 10 s idle: stop reusing them first.
limits.IDLE_TIMEOUT = { min = 1, max = 3600, default = 8 }           -- seconds
limits.MAX_RESPONSE_BYTES = { min = 1024, max = 2 ^ 30, default = 8 * 1024 * 1024 }
limits.MAX_RESPONSE_MEMORY = { min = 1024, max = 2 ^ 40, default = 64 * 1024 * 1024 }
-- libcurl's receive buffer per connection (its default is 16 KB): RRpc answers are small.
limits.RECEIVE_BUFFER_BYTES = 4096
limits.REQUEST_TIMEOUT = { min = 1, max = 600000, default = 10000 }  -- client:request, ms

-- Batches (rrpc.batch, rrpc.each)
limits.CONCURRENCY = { min = 1, max = 100000, default = 100 }
limits.BATCH_QPS = { min = 1, max = 1000000, default = limits.QUOTA_QPS }
limits.DEADLINE = { min = 1, max = 2 ^ 31 }                          -- ms
limits.PROGRESS_INTERVAL = 0.1   -- seconds between on_progress calls
limits.MAX_WAIT_MS = 1000        -- the scheduler looks at the clock at least this often

-- Signals (rrpc.signals)
limits.SIGNALS_FORCE_AFTER = { min = 0, max = 1000, default = 0 } -- 0: never
limits.SIGNALS_MAX_WAIT_MS = 3600000

-- Showing what a call signs (client:sign_rrpc)
limits.SIGN_NONCE_BYTES = { min = 1, max = 64 }

-- Retries (rrpc.retry)
limits.MAX_ATTEMPTS = { min = 1, max = 100, default = 3 }
limits.BASE_DELAY = { min = 0, max = 3600000, default = 100 }        -- ms
limits.THROTTLE_DELAY = { min = 0, max = 3600000, default = 500 }    -- ms
limits.MAX_DELAY = { min = 0, max = 3600000, default = 20000 }       -- ms

-- The ECS metadata service (RAM-role credentials)
limits.METADATA_ENDPOINT = "http://100.100.100.200"
limits.METADATA_CONNECT_MS = 1000
limits.METADATA_TIMEOUT_MS = 2000
limits.METADATA_TOKEN_TTL_S = 21600

-- The command line (bin/rrpc, rrpc.cli)
limits.CLI_RETRIES = { min = 0, max = limits.MAX_ATTEMPTS.max - 1, call = 0, batch = 2 }
limits.CLI_PROGRESS_INTERVAL_S = 10      -- plain progress lines when standard error is no terminal
limits.CLI_METRICS_INTERVAL_S = 10       -- rrpc batch --metrics FILE is written this often
limits.CLI_BAR_REDRAW_S = 0.1            -- the progress bar on a terminal
limits.CLI_SIGNALS_FORCE_AFTER = 3       -- Ctrl-C a third time ends rrpc even when it is stuck
limits.CLI_EMULATOR_PORT = 8080
limits.CLI_EMULATOR_START_S = 10         -- how long rrpc emulator waits for nginx to listen
limits.CLI_WATCH_INTERVAL_MS = 200       -- how often rrpc emulator looks at its child

-- Inside nginx (rrpc.ngx)
limits.NGX_QPS = { min = 1, max = 1000000, default = limits.QUOTA_QPS }
-- The longest a single call waits for a slot of its client's quota (rrpc.quota, rrpc.ngx)
limits.MAX_QUOTA_WAIT = { min = 0, max = 60000, default = 1000 }     -- ms

-- Quotas (rrpc.quota): one limit shared by every call of a client, or of many hosts
limits.QUOTA_QPS_RANGE = { min = 1, max = 1000000, default = limits.QUOTA_QPS }
-- Redis (rrpc.quota.redis). Slots are leased in blocks of at most QUOTA_BLOCK_SECONDS of
-- the quota, a block only when its first slot is at most QUOTA_LOOK_AHEAD ahead of Redis's
-- clock; a slot is sent at
-- or after its time and dropped when it could not be sent within QUOTA_GRACE of it. Slots
-- are spaced (1 + QUOTA_GRACE + QUOTA_COUNT_JITTER) / qps apart, so that any second of the
-- platform's counting holds at most qps of them (README, "Many hosts, one quota").
limits.QUOTA_BLOCK_SECONDS = 0.02
limits.QUOTA_LOOK_AHEAD = 0.1             -- s
limits.QUOTA_GRACE = 0.015                -- s
limits.QUOTA_COUNT_JITTER = 0.01          -- s between our send and the platform's count
limits.QUOTA_REDIS_TIMEOUT = { min = 1, max = 60000, default = 200 } -- ms: connect, and each reply
limits.QUOTA_REDIS_PORT = 6379
limits.QUOTA_REDIS_DB = { min = 0, max = 1000000 }
-- The local share while Redis cannot be reached: qps / QUOTA_FALLBACK_SHARE by default,
-- so that up to that many hosts on their fallback together stay within the quota.
limits.QUOTA_FALLBACK_SHARE = 8
-- While on the fallback, Redis is asked again this often.
limits.QUOTA_PROBE_INTERVAL = 0.25        -- s
-- The first host back from its fallback holds the shared quota for a probe interval, its
-- timeout and this margin, so that no host is still on its fallback when the shared sends
-- begin again.
limits.QUOTA_REJOIN_MARGIN = 0.05         -- s
-- Kept-alive Redis connections inside nginx (lua-resty-redis's set_keepalive)
limits.QUOTA_REDIS_KEEPALIVE_MS = 10000
limits.QUOTA_REDIS_POOL_SIZE = 16

return limits
