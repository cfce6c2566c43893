-- rrpc: call the Alibaba Cloud IoT Platform operation RRpc (send bytes to one device,
-- get its reply back) from Lua. Bytes and crypto live in rrpc.core (C); policy lives in
-- the modules under rrpc/.
local core = require "rrpc.core"
local batch = require "rrpc.batch"
local client = require "rrpc.client"
local credentials = require "rrpc.credentials"
local errors = require "rrpc.errors"
local quota = require "rrpc.quota"
local metrics = require "rrpc.metrics"
local limits = require "rrpc.limits"
local retry = require "rrpc.retry"
local signals = require "rrpc.signals"

return {
  _NAME = "rrpc",
  _VERSION = core._VERSION,
  percent_encode = core.percent_encode,
  b64encode = core.b64encode,
  b64decode = core.b64decode,
  sign_v1 = core.sign_v1,
  sign_v3 = core.sign_v3,
  is_error = errors.is_error,
  monotime = core.monotime,
  new = client.new,
  check_request = client.check_request,
  batch = batch.batch,
  each = batch.each,
  check_batch = batch.check,
  retry = retry,
  credentials = credentials,
  quota = quota,
  signals = signals,
  limits = limits,
  metrics = metrics,
}
