-- rrpc batch: every device of a file (CSV or JSON lines) through rrpc.each, one JSON line
-- per device on standard output as calls complete (or in input order), progress and a
-- summary on standard error.
--
-- Interrupted: the first SIGINT or SIGTERM drains the batch (no more lines read, no call
-- started; the calls in flight finish within their own timeout and get their lines), a
-- second one cancels what is still in flight (outcome "cancelled", delivered "maybe").
-- Every outcome is written, then the summary with the lines not started; the exit status
-- is 128 + the first signal's number. --resume FILE goes on where such a run stopped.
local rrpc = require "rrpc"
local common = require "rrpc.cli.common"
local input = require "rrpc.cli.input"
local output = require "rrpc.cli.output"
local progress_module = require "rrpc.cli.progress"
local resume = require "rrpc.cli.resume"

local batch = {}

local EXIT, fail = output.EXIT, common.fail

---------------------------------------------------------------------------------------
-- Writing the outcomes

local Results = {}
Results.__index = Results

function Results.new(ordered, progress, write)
  return setmetatable({ ordered = ordered, progress = progress, write_line = write, waiting = {}, next_seq = 1 },
    Results)
end

function Results:write(line)
  self.progress:before_output()
  self.write_line(line)
end

-- In order, a line waits until every line before it is out (or known never to come:
-- false); that is all that is kept.
function Results:emit(seq, line)
  if not self.ordered then
    if line then self:write(line) end
    return
  end
  self.waiting[seq] = line
  while self.waiting[self.next_seq] ~= nil do
    local next_line = self.waiting[self.next_seq]
    if next_line then self:write(next_line) end
    self.waiting[self.next_seq] = nil
    self.next_seq = self.next_seq + 1
  end
end

--- results:finish() -- the lines still waiting for earlier ones that will not come (the
-- batch was stopped), in order
function Results:finish()
  local seqs = {}
  for seq, line in pairs(self.waiting) do
    if line then seqs[#seqs + 1] = seq end
  end
  table.sort(seqs)
  for _, seq in ipairs(seqs) do self:write(self.waiting[seq]) end
  self.waiting = {}
end

--- results:add(record, res, err) -- one device's outcome (or its line's problem)
function Results:add(record, res, err)
  local fields = { line = record.line, product_key = record.product_key, device_name = record.device_name }
  local attempts = 0
  if record.problem then
    fields.ok, fields.outcome, fields.code, fields.kind = false, "invalid", "InvalidLine", "invalid"
    fields.message, fields.delivered, fields.retryable = record.problem, "no", false
  else
    output.outcome_fields(res, err, fields)
    attempts = fields.attempts
    -- the library numbers requests as it read them; the line number is what the user knows
    fields.message = fields.message and fields.message:gsub("^request #%d+: ", "")
  end
  if attempts == 0 then
    self.progress:note(("line %d: %s"):format(record.line, output.valid_utf8(fields.message)))
  end
  self.progress:count(fields.outcome, attempts)
  self:emit(record.seq, output.json_object(output.OUTCOME_FIELDS, fields))
  self.progress:tick()
end

---------------------------------------------------------------------------------------
-- The batch

local function signal_status(name)
  return 128 + rrpc.signals.number(name)
end

--- batch.run(opts, env) --> exit status
function batch.run(opts, env)
  if opts.devices == "-" and input.payload_uses_stdin(opts) then
    fail(EXIT.invalid, "standard input cannot be both the devices and the payload")
  end
  if opts.resume and #opts.resume == 0 then opts.resume = nil end -- argparse's empty list
  if opts.resend_undelivered and not opts.resume then
    fail(EXIT.invalid, "--resend-undelivered goes with --resume FILE")
  end
  local payload, label = input.payload(opts, env)
  local names = common.option_names(opts, label)
  -- The library's own checks, once on what every line shares, so that a bad --timeout or
  -- --payload is one error before the batch rather than an error on every line.
  common.check_request({ product_key = "-", device_name = "-", payload = payload or "", timeout = opts.timeout },
    names)
  local earlier = opts.resume and resume.read(opts.resume, opts.resend_undelivered)
  local devices = opts.devices == "-" and env.stdin or input.open(opts.devices, "devices file")
  local records = input.records(devices, opts.format)

  -- With --resume, the input is checked against FILE before any call: read ahead up to
  -- the last line FILE has an outcome for.
  local ahead, ahead_next = {}, 1
  if earlier and earlier.count > 0 then
    while true do
      local record = records()
      if not record then break end
      earlier:check(record)
      ahead[#ahead + 1] = record
      if record.line >= earlier.max_line then break end
    end
    earlier:check_all_seen()
  end
  local last_line_read = 0
  local function next_record()
    local record = ahead[ahead_next]
    if record then
      ahead[ahead_next] = nil
      ahead_next = ahead_next + 1
    else
      record = records()
    end
    if record then last_line_read = record.line end
    return record
  end

  -- --metrics FILE: written whole under another name, then renamed over FILE, so that a
  -- reader (node-exporter's textfile collector) never sees half of it
  local collector = opts.metrics and rrpc.metrics.new()
  local metrics_written = -math.huge
  local function write_metrics(now)
    if not collector then return end
    metrics_written = now
    local partial = opts.metrics .. ".partial"
    local file, why = io.open(partial, "w")
    if file then
      file:write(collector:render())
      file:close()
      why = select(2, os.rename(partial, opts.metrics))
    end
    if why then fail(EXIT.invalid, ("cannot write --metrics %s: %s"):format(opts.metrics, why)) end
  end
  write_metrics(rrpc.monotime()) -- an unwritable FILE is one error before any call
  local client = common.open_client(opts, env, names, collector)
  local counted = opts.devices ~= "-" and input.count(devices, opts.devices, opts.format) or nil
  local stderr_is_terminal = env.is_terminal("stderr")
  local progress = progress_module.new {
    stream = env.stderr,
    total = counted and counted - (earlier and earlier.count or 0) or nil,
    bar = stderr_is_terminal,
    interval = opts.progress_interval or rrpc.limits.CLI_PROGRESS_INTERVAL_S,
    clear_for_output = stderr_is_terminal and env.is_terminal("stdout"),
  }
  local results = Results.new(opts.ordered, progress, output.writer(env.stdout))

  local sent = {} -- the library's request index -> its record, until the outcome is out
  local request_count, read_count, not_sent = 0, 0, 0
  -- Feeds rrpc.each one request at a time; lines that cannot be sent are answered here.
  local function next_request()
    for record in next_record do
      read_count = read_count + 1
      if earlier and earlier:skips(record) then
        results:emit(record.seq, false)
      else
        if not record.problem and not (record.payload or payload) then
          record.problem = "no payload: give one on the line or with --payload, --payload-file or -"
        end
        if record.problem then
          results:add(record)
        else
          request_count = request_count + 1
          sent[request_count] = record
          return { product_key = record.product_key, device_name = record.device_name, payload = record.payload }
        end
      end
    end
  end

  local signals, first_signal, stop = env.signals, nil, nil
  local function should_stop(stats)
    for _, name in ipairs(signals.take()) do
      first_signal = first_signal or name
      if not stop then
        stop = "drain"
        progress:stopping("draining", stats.in_flight, ("SIG%s: draining: no new calls; the %d in flight finish"
          .. " within their timeout (SIG%s again cancels them)"):format(name, stats.in_flight, name))
      elseif stop == "drain" then
        stop = "cancel"
        progress:stopping("cancelling", stats.in_flight,
          ("SIG%s, a second signal: cancelling the %d calls in flight"):format(name, stats.in_flight))
      end
    end
    return stop
  end

  local ok, why = pcall(function()
    for index, res, err in rrpc.each(client, next_request, {
      concurrency = opts.concurrency, qps = opts.qps,
      retry = common.retry_policy(opts.retries or rrpc.limits.CLI_RETRIES.batch),
      defaults = { payload = payload, timeout = opts.timeout },
      on_progress = function(_, _, stats)
        progress:tick(stats)
        local now = rrpc.monotime()
        if now - metrics_written >= rrpc.limits.CLI_METRICS_INTERVAL_S then write_metrics(now) end
      end,
      should_stop = should_stop,
    }) do
      local record = sent[index]
      sent[index] = nil
      if err and err.code == "NotStarted" then -- read, never sent: no line, as if never read
        not_sent = not_sent + 1
        results:emit(record.seq, false)
      else
        results:add(record, res, err)
      end
    end
  end)
  -- whatever happened, every outcome known is out
  results:finish()
  write_metrics(rrpc.monotime())
  client:close()
  if devices ~= env.stdin then devices:close() end
  if not ok then
    local refusal = common.refusal(why) -- rrpc.each refused an option: --qps 0
    if refusal then fail(EXIT.invalid, common.renamed(refusal, names)) end
    error(why, 0)
  end

  local rows = {}
  if earlier then
    rows[#rows + 1] = { "skipped", earlier.skipped, "with an outcome in " .. table.concat(opts.resume, ", ") }
  end
  if first_signal then
    local unread = counted and (counted - read_count)
    local not_started = unread and (unread + not_sent)
    rows[#rows + 1] = { "not started", not_started, unread == nil and ("the input after line %d was not read"):format(
      last_line_read) or nil }
  end
  progress:finish(rows)
  if first_signal then
    progress:note(("interrupted (SIG%s): to go on, run the same command again with --resume <this run's output>")
      :format(first_signal))
    return signal_status(first_signal)
  end
  return progress.done == (progress.counts.ok or 0) and EXIT.ok or output.EXIT_BATCH_FAILURES
end

return batch
