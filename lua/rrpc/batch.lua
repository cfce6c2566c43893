-- Many RRpc calls from one client: up to `concurrency` in flight on the client's pool of
-- kept-alive connections (libcurl multi), at most `qps` per second, retried by a policy,
-- ended by an optional deadline, or stopped by the caller (should_stop: drained, then
-- cancelled). rrpc.each streams outcomes as they complete; rrpc.batch collects them in
-- input order. Every request read is accounted for exactly once.
local core = require "rrpc.core"
local args = require "rrpc.args"
local client = require "rrpc.client"
local errors = require "rrpc.errors"
local limits = require "rrpc.limits"
local retry = require "rrpc.retry"

local batch = {}

local OPTIONS = {
  concurrency = { type = "integer", range = limits.CONCURRENCY },
  qps = { type = "integer", range = limits.BATCH_QPS },
  burst = { type = "integer", range = limits.BATCH_QPS },
  retry = { type = "any", check = function(value) return select(2, retry.option(value)) end },
  deadline_ms = { type = "integer", range = limits.DEADLINE },
  on_progress = { type = "function" },
  should_stop = { type = "function" },
  defaults = { type = "table" },
}
local STOP_MODES = { drain = true, cancel = true }
local PROGRESS_INTERVAL = limits.PROGRESS_INTERVAL
local MAX_WAIT_MS = limits.MAX_WAIT_MS

local Run = {}
Run.__index = Run

local rrpc_call, signer_of, interpret = client.rrpc_call, client.signer, client.interpret

local function source_of(fname, requests, level)
  if type(requests) == "table" then
    local i, n = 0, #requests
    return function()
      if i < n then
        i = i + 1
        return requests[i]
      end
    end, n
  elseif type(requests) == "function" then
    return requests, nil
  end
  args.raise(fname, 2, "array of requests or iterator function expected, got " .. type(requests), level + 1)
end

local function start(c, requests, opts, fname, level)
  if not client.is_client(c) then
    args.raise(fname, 1, "rrpc client expected, got " .. type(c), level + 1)
  end
  local p = client.open_state(c, fname, level + 1)
  local next_request, total = source_of(fname, requests, level + 1)
  opts = opts or {}
  args.check(fname, 3, opts, OPTIONS, level + 1)
  local qps = opts.qps or limits.BATCH_QPS.default
  if opts.burst and opts.burst > qps then
    args.raise(fname, 3, ("option 'burst' must be in 1..%d, got %d"):format(qps, opts.burst), level + 1)
  end
  local policy = retry.option(opts.retry, retry.default)
  local concurrency = opts.concurrency or limits.CONCURRENCY.default
  local transport, state = client.transport_of(p)
  local now = core.monotime()
  return setmetatable({
    client = c, p = p, pool = transport.pool(state, concurrency), fname = fname,
    next_request = next_request, total = total, read = 0, exhausted = false,
    defaults = opts.defaults, policy = policy, concurrency = concurrency,
    limiter = transport.limiter(state, qps, opts.burst or math.max(1, math.floor(qps / 10)), now),
    deadline = opts.deadline_ms and now + opts.deadline_ms / 1000,
    on_progress = opts.on_progress, last_progress = now, started = now,
    should_stop = opts.should_stop, stopping = nil,
    in_flight = {}, in_flight_count = 0, waiting = {}, held = nil, free_tokens = {}, tokens = 0,
    outcomes = {}, first_outcome = 1, last_outcome = 0,
    stats = { done = 0, ok = 0, failed = 0, attempts = 0, retried = 0, in_flight = 0, by_kind = {}, by_code = {} },
  }, Run)
end

-- The run's steps are local functions, not methods: a batch takes each of them for every
-- call, and a method costs three table lookups before its call.

-- call: the request's (nil for one never read as a call); its timings feed on_call.
local function record(self, index, res, err, attempts, call)
  local outcome = res or err
  outcome.attempts = attempts
  local p = self.p
  if p.on_call then
    local now = core.monotime()
    client.call_over(p, call, res, err, attempts, call and now - call.read_at or 0,
      call and call.quota_wait or 0)
  end
  local s = self.stats
  s.done = s.done + 1
  s.attempts = s.attempts + attempts
  local code
  if res then
    s.ok = s.ok + 1
    code = res.rrpc_code
  else
    s.failed = s.failed + 1
    s.by_kind[err.kind] = (s.by_kind[err.kind] or 0) + 1
    code = err.rrpc_code or err.code
  end
  s.by_code[code] = (s.by_code[code] or 0) + 1
  -- three slots an outcome, rather than a table each
  local last = self.last_outcome
  self.last_outcome = last + 1
  local outcomes, at = self.outcomes, 3 * last
  outcomes[at + 1], outcomes[at + 2], outcomes[at + 3] = index, res or false, err or false
end

-- Reads the next request as a call, which is also what the run keeps of it (its index,
-- attempts and timings); a malformed one becomes an "invalid" outcome right away.
local function read_next(self)
  while true do
    local request = self.next_request()
    if request == nil then
      self.exhausted = true
      self.total = self.read
      return nil
    end
    local read = self.read + 1
    self.read = read
    local defaults = self.defaults
    if defaults and type(request) == "table" then
      local merged = {}
      for k, v in pairs(defaults) do merged[k] = v end
      for k, v in pairs(request) do merged[k] = v end
      request = merged
    end
    local call, problem = rrpc_call(self.client, request, read)
    if call then
      if self.p.on_call then call.read_at = core.monotime() end -- for the hook's durations
      return call
    end
    -- what the malformed request names of itself, for on_call
    local named = type(request) == "table" and request or {}
    local pseudo = { action = "RRpc", read_at = core.monotime(), params = {
      ProductKey = type(named.product_key) == "string" and named.product_key or nil,
      DeviceName = type(named.device_name) == "string" and named.device_name or nil } }
    record(self, self.read, nil, errors.new { kind = "invalid", code = "InvalidArgument",
      message = ("request #%d: %s"):format(self.read, problem.message), option = problem.option,
      delivered = "no" }, 0, pseudo)
  end
end

local settle

local function send(self, call, now)
  local held_at = call.held_at
  if held_at then -- it waited for the rate limit
    call.quota_wait = (call.quota_wait or 0) + (now - held_at)
    call.held_at = nil
  end
  local attempts, p = call.attempts, self.p
  if attempts == 0 and p.on_call_start then client.call_started(p, call) end
  call.attempts = attempts + 1
  local pool = self.pool
  local signer, url, headers, body, err
  if pool.add_signed then
    signer, err = signer_of(self.client, p)
  else
    url, headers, body = client.sign(self.client, p, call)
    err = headers
  end
  if not (signer or url) then -- no credentials now: settled like any failure, retried if the policy says so
    settle(self, call, nil, err, core.monotime())
    return
  end
  -- A token names a call in flight to the pool; a finished call's is given to the next,
  -- so in_flight stays an array of at most `concurrency` slots, not a hash of ever-growing
  -- keys that is rebuilt every few thousand calls.
  local free = self.free_tokens
  local free_count = #free
  local token = free[free_count]
  if token then
    free[free_count] = nil
  else
    self.tokens = self.tokens + 1
    token = self.tokens
  end
  if signer then
    pool:add_signed(token, signer, call.action, call.params, call.http_timeout)
  else
    pool:add(token, url, headers, body, call.http_timeout)
  end
  self.in_flight[token] = call
  self.in_flight_count = self.in_flight_count + 1
end

-- Starts calls while there is room, work and quota; returns seconds until the limiter
-- allows the next one, or nil.
local function fill(self, now)
  local concurrency, limiter, waiting = self.concurrency, self.limiter, self.waiting
  while self.in_flight_count < concurrency do
    local call = self.held
    self.held = nil
    if not call and waiting[1] and waiting[1].due <= now then
      call = table.remove(waiting, 1)
    end
    if not call and not self.exhausted then
      call = read_next(self)
    end
    if not call then return nil end
    local wait = limiter:take(now)
    if wait > 0 then
      self.held = call
      call.held_at = call.held_at or now
      return wait
    end
    send(self, call, now)
  end
end

local function insert_by_due(list, call)
  local i = #list
  while i > 0 and list[i].due > call.due do i = i - 1 end
  table.insert(list, i + 1, call)
end

-- A completion of the pool's: status, headers and body, or false, err.
local function complete(self, token, status, headers_or_err, body, now)
  local in_flight, free = self.in_flight, self.free_tokens
  local call = in_flight[token]
  in_flight[token] = nil
  free[#free + 1] = token
  self.in_flight_count = self.in_flight_count - 1
  local res, err
  if status then
    res, err = interpret(self.p, call, status, headers_or_err, body)
  else
    err = headers_or_err
  end
  settle(self, call, res, err, now)
end

-- An attempt's outcome: final, or the call waits for its retry.
function settle(self, call, res, err, now)
  if err then
    local policy = call.retry
    if policy == nil then policy = self.policy end
    if policy and not self.stopping then
      local delay = policy:delay(err, call.attempts)
      if delay and not (self.deadline and now + delay / 1000 >= self.deadline) then
        call.due, call.err = now + delay / 1000, err
        insert_by_due(self.waiting, call)
        self.stats.retried = self.stats.retried + 1
        return
      end
    end
  end
  record(self, call.index, res, err, call.attempts, call)
end

local function deadline_error(delivered)
  return errors.new { kind = "deadline", code = "DeadlineExceeded", delivered = delivered,
    retryable = delivered == "no",
    message = delivered == "no" and "not sent before the batch's deadline"
              or "still in flight at the batch's deadline" }
end

-- The pool holds none of the run's calls any more: every token is free.
function Run:forget_in_flight()
  self.in_flight, self.in_flight_count, self.free_tokens, self.tokens = {}, 0, {}, 0
end

-- Drops the calls in flight (they may have been delivered): each ends with dropped().
function Run:drop_in_flight(dropped)
  for token, call in pairs(self.in_flight) do
    self.pool:cancel(token)
    record(self, call.index, nil, dropped(), call.attempts, call)
  end
  self:forget_in_flight()
end

-- Settles what was not sent: the call held for the rate limit ends with its last error
-- or unsent(), calls waiting for a retry keep their last error, the rest of an array is
-- unsent() too; nothing more is read.
function Run:settle_unsent(unsent)
  local held = self.held
  if held then
    self.held = nil
    record(self, held.index, nil, held.err or unsent(), held.attempts, held)
  end
  for _, call in ipairs(self.waiting) do
    record(self, call.index, nil, call.err, call.attempts, call)
  end
  self.waiting = {}
  if not self.exhausted and self.total then
    while self.next_request() ~= nil do
      self.read = self.read + 1
      record(self, self.read, nil, unsent(), 0)
    end
  end
  self.exhausted = true
  self.total = self.read
end

-- At the deadline every request read is settled: calls in flight are dropped (they may
-- have been delivered), calls waiting for a retry keep their last error, the rest of an
-- array is refused without sending.
function Run:expire()
  self:drop_in_flight(function() return deadline_error("maybe") end)
  self:settle_unsent(function() return deadline_error("no") end)
end

local function not_started_error()
  return errors.new { kind = "cancelled", code = "NotStarted", delivered = "no", retryable = true,
    message = "not sent: the batch was stopped first" }
end

local function cancelled_error()
  return errors.new { kind = "cancelled", code = "Cancelled", delivered = "maybe",
    message = "cancelled while in flight: the device may have received it" }
end

-- Drain: nothing more is read or started; calls waiting for a retry keep their last
-- error, a call read but not yet started (waiting for the rate limit) is NotStarted, the
-- rest of an array too; the calls in flight run to their end. Cancel: drain, and the calls
-- in flight are dropped (Cancelled, delivered "maybe").
function Run:stop(mode)
  if not self.stopping then
    self.stopping = "drain"
    self:settle_unsent(not_started_error)
  end
  if mode == "cancel" and self.stopping ~= "cancel" then
    self.stopping = "cancel"
    self:drop_in_flight(cancelled_error)
  end
end

-- Asks the caller's should_stop (once cancelled, there is nothing left to stop).
local function check_stop(self)
  if not self.should_stop or self.stopping == "cancel" then return end
  self.stats.in_flight = self.in_flight_count
  local mode = self.should_stop(self.stats)
  if mode == nil or mode == false then return end
  if not STOP_MODES[mode] then
    error(("bad result from should_stop in '%s' (nil, \"drain\" or \"cancel\" expected, got %s)"):format(
      self.fname, args.describe(mode)), 0)
  end
  self:stop(mode)
end

local function finished(self)
  return self.exhausted and self.in_flight_count == 0 and not self.held and #self.waiting == 0
end

local function progress(self, now, final)
  if self.on_progress and (final or now - self.last_progress >= PROGRESS_INTERVAL) then
    self.last_progress = now
    self.stats.in_flight = self.in_flight_count
    self.on_progress(self.stats.done, self.total, self.stats)
  end
end

-- Drives the calls until an outcome is ready; returns index, res, err or nil at the end.
function Run:next_outcome()
  while self.first_outcome > self.last_outcome do
    check_stop(self)
    if self.first_outcome <= self.last_outcome then break end
    if finished(self) then
      if not self.reported_end then
        self.reported_end = true
        progress(self, core.monotime(), true)
      end
      return nil
    end
    local now = core.monotime()
    if self.deadline and now >= self.deadline then
      self:expire()
    else
      local limit_wait = fill(self, now)
      if self.first_outcome > self.last_outcome and not finished(self) then
        local wait = MAX_WAIT_MS / 1000
        if limit_wait and limit_wait < wait then wait = limit_wait end
        local retry_at = self.waiting[1] and self.waiting[1].due
        if retry_at and retry_at - now < wait then wait = retry_at - now end
        if self.deadline and self.deadline - now < wait then wait = self.deadline - now end
        local completions = self.pool:run(math.max(1, math.ceil(wait * 1000)))
        now = core.monotime()
        for i = 1, #completions, 4 do
          complete(self, completions[i], completions[i + 1], completions[i + 2], completions[i + 3], now)
        end
        progress(self, now)
      end
    end
  end
  local at, outcomes = 3 * (self.first_outcome - 1), self.outcomes
  local index, res, err = outcomes[at + 1], outcomes[at + 2], outcomes[at + 3]
  outcomes[at + 1], outcomes[at + 2], outcomes[at + 3] = nil, nil, nil
  if self.first_outcome == self.last_outcome then -- all handed out: the array starts over
    self.first_outcome, self.last_outcome = 1, 0
  else
    self.first_outcome = self.first_outcome + 1
  end
  return index, res or nil, err or nil
end

-- Leaving a stream early (break) drops the calls still in flight.
function Run:abort()
  for token in pairs(self.in_flight) do self.pool:cancel(token) end
  self:forget_in_flight()
end

function Run:summary()
  local s = self.stats
  return { total = s.done, ok = s.ok, failed = s.failed, by_kind = s.by_kind, by_code = s.by_code,
           attempts = s.attempts, retried = s.retried, seconds = core.monotime() - self.started }
end

--- batch.check(opts) --> nil | { option =, message = }: what rrpc.batch would raise for
function batch.check(opts)
  return args.problem(opts or {}, OPTIONS)
end

--- rrpc.each(client, requests_or_iterator, opts) --> iterator of index, res, err
function batch.each(c, requests, opts)
  local run = start(c, requests, opts, "each", 2)
  local closer = setmetatable({}, { __close = function() run:abort() end })
  return function() return run:next_outcome() end, nil, nil, closer
end

--- rrpc.batch(client, requests, opts) --> results, summary
-- results[i] = { res = ... } or { err = ... }, in input order.
function batch.batch(c, requests, opts)
  local run = start(c, requests, opts, "batch", 2)
  local results = {}
  for index, res, err in function() return run:next_outcome() end do
    results[index] = res and { res = res } or { err = err }
  end
  return results, run:summary()
end

return batch
