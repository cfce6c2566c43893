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

-- Inside nginx (rrpc.ngx)
limits.NGX_QPS = { min = 1, max = 1000000, default = limits.QUOTA_QPS }
limits.MAX_QUOTA_WAIT = { min = 0, max = 60000, default = 1000 }     -- ms

return limits
