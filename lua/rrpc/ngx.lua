-- rrpc inside nginx (OpenResty, lua-nginx-module): the same client, batches and retries,
-- with the HTTP carried by nginx itself (lua/rrpc/transport/ngx.lua). Signing still comes
-- from rrpc.core (CPU only).
--
-- nginx.conf needs (see examples/openresty/):
--   location = /_rrpc { internal; include rrpc-location.conf; }
--   location = /_rrpc_fetch { internal; include rrpc-fetch-location.conf; }
--   upstream rrpc_platform { server ...; balancer_by_lua_block { require("rrpc.ngx").balance() } ... }
-- and `lua_check_client_abort on` where the calls are made, so that nothing is sent for
-- a client that has gone.
local ngx = ngx
local rrpc = require "rrpc"
local args = require "rrpc.args"
local batch = require "rrpc.batch"
local client = require "rrpc.client"
local limits = require "rrpc.limits"
local quota = require "rrpc.quota"
local retry = require "rrpc.retry"
local shared_dict = require "rrpc.quota.shared_dict"
local transport = require "rrpc.transport.ngx"

local M = {
  retry = retry, batch = batch.batch, each = batch.each, is_error = rrpc.is_error,
  percent_encode = rrpc.percent_encode, b64encode = rrpc.b64encode, b64decode = rrpc.b64decode,
  sign_v1 = rrpc.sign_v1, sign_v3 = rrpc.sign_v3, credentials = rrpc.credentials,
  metrics = rrpc.metrics, check_batch = batch.check,
}
-- every limit and default, as rrpc.limits (the example gateway's Retry-After)
M.limits = limits

local function location_uri(name)
  return function(value)
    if not value:find("^/") then
      return ("option '%s' must be a location's URI, starting with \"/\", got %s"):format(name, args.describe(value))
    end
  end
end

local NGX_OPTIONS = {
  location = { type = "string", check = location_uri("location") },
  fetch_location = { type = "string", check = location_uri("fetch_location") },
  -- the quota of every worker, in a lua_shared_dict: rrpc_ngx.quota.shared_dict's
  quota_dict = { type = "string", check = shared_dict.check_dict("quota_dict") },
  qps = { type = "integer", range = limits.NGX_QPS },
}
local OPTIONS = args.merge(client.NEW_OPTIONS, NGX_OPTIONS)

--- rrpc.ngx.new{ ...rrpc.new's options..., location = "/_rrpc", fetch_location = "/_rrpc_fetch",
--                quota = nil, quota_dict = nil, qps = 1000, max_quota_wait = 1000 }
-- location: the internal location that proxies to the platform; fetch_location: the one
-- that reaches the ECS metadata service; quota: an rrpc_ngx.quota (redis, shared_dict) for
-- every call of the client; quota_dict: the same as quota = rrpc_ngx.quota.shared_dict{
-- name = quota_dict, qps = qps }; a single call waits at most max_quota_wait ms for a
-- slot, or fails at once as Throttling.Quota; batches wait (paced by their own `qps`,
-- within the quota).
function M.new(opts)
  args.check("new", 1, opts, OPTIONS, 2)
  -- nginx's upstream module speaks HTTP/1.1 to the platform, whatever is asked
  if opts.http_version == "2" then
    args.raise("new", 1,
               "option 'http_version' \"2\" is not available in rrpc.ngx (nginx's upstream speaks HTTP/1.1)", 2)
  end
  local plain, own = {}, {}
  for k, v in pairs(opts) do
    if NGX_OPTIONS[k] then own[k] = v else plain[k] = v end
  end
  if own.quota_dict then
    if opts.quota then args.raise("new", 1, "option 'quota_dict' cannot go with option 'quota'", 2) end
    plain.quota = shared_dict.new({ name = own.quota_dict, qps = own.qps or limits.NGX_QPS.default,
                                    key = opts.access_key_id }, "new", 2)
  end
  local settings = {
    location = own.location or "/_rrpc",
    fetch_location = own.fetch_location or "/_rrpc_fetch",
  }
  return client.new_with(plain, transport, settings, 3)
end

--- rrpc_ngx.on_abort(fn) --> 1 | nil, err: ngx.on_abort for requests that make rrpc calls.
-- fn runs when the client leaves, after rrpc has marked the request's calls as not to be
-- sent; unlike rrpc's default, the request then runs on unless fn calls ngx.exit.
function M.on_abort(fn)
  if type(fn) ~= "function" then
    args.raise("on_abort", 1, "function expected, got " .. type(fn), 2)
  end
  local rs = ngx.ctx.rrpc_ngx
  if not rs then
    rs = transport.request_state(fn)
    if rs.watching ~= "rrpc" then return nil, rs.watching end
    return 1
  end
  if rs.watching ~= "rrpc" then return nil, rs.watching end
  if rs.user_on_abort then return nil, "duplicate call" end
  rs.user_on_abort = fn
  return 1
end

--- rrpc_ngx.client_gone() --> whether rrpc has seen this request's client leave
function M.client_gone()
  local rs = ngx.ctx.rrpc_ngx
  return rs ~= nil and rs.gone
end

local function variable_of(header)
  return "rrpc_" .. header:gsub("%-", "_")
end

--- In the internal location (rewrite_by_lua): the signed headers become the variables the
-- location's proxy_set_header lines read.
function M.before_upstream()
  local headers = ngx.ctx.rrpc_headers
  if not headers then return ngx.exit(ngx.HTTP_NOT_FOUND) end
  for _, name in ipairs(transport.FORWARDED_HEADERS) do
    ngx.var[variable_of(name)] = headers[name] or ""
  end
  ngx.var.rrpc_scheme = ngx.ctx.rrpc_scheme
  ngx.var.rrpc_sni = ngx.ctx.rrpc_sni
end

--- In the fetch location (rewrite_by_lua): the URL and headers of a fetch.
function M.before_fetch()
  local ctx = ngx.ctx
  if not ctx.rrpc_fetch_url then return ngx.exit(ngx.HTTP_NOT_FOUND) end
  ngx.var.rrpc_fetch_url = ctx.rrpc_fetch_url
  for name, variable in pairs(transport.FETCH_HEADERS) do
    ngx.var[variable] = ctx.rrpc_fetch_headers[name] or ""
  end
end

--- In the internal locations (header_filter_by_lua): what the upstream did, for send().
function M.after_upstream()
  local ctx = ngx.ctx
  ctx.rrpc_upstream_connect_time = ngx.var.upstream_connect_time
  ctx.rrpc_upstream_header_time = ngx.var.upstream_header_time
  ctx.rrpc_upstream_status = ngx.var.upstream_status
end

--- In the platform's upstream (balancer_by_lua): the call's own timeouts.
function M.balance()
  local ctx = ngx.ctx
  local timeouts = ctx.rrpc_timeouts
  if not timeouts then return end
  local ok, err = require("ngx.balancer").set_timeouts(timeouts[1], timeouts[2], timeouts[2])
  if not ok then ngx.log(ngx.ERR, "rrpc.ngx: cannot set the call's timeouts: ", err) end
  ctx.rrpc_balanced = true
end

M.FORWARDED_HEADERS = transport.FORWARDED_HEADERS

--- rrpc_ngx.quota.redis{ url =, key =, qps =, ... }: rrpc.quota.redis's options, on
-- cosockets (lua-resty-redis); rrpc_ngx.quota.shared_dict{ name =, qps =, key = };
-- rrpc_ngx.quota.process{ qps = } (this worker's calls only).
M.quota = {
  redis = function(opts) return quota.redis_with(opts, require "rrpc.transport.ngx_redis", "redis", 2) end,
  shared_dict = function(opts) return shared_dict.new(opts, "shared_dict", 2) end,
  process = quota.process,
  is_quota = quota.is_quota,
}

return M
