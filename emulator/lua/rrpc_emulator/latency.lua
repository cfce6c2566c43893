-- Latency distributions for a device's `latency` field:
--   {"dist": "fixed", "ms": 200}
--   {"dist": "uniform", "min_ms": 150, "max_ms": 250}
--   {"dist": "normal", "mean_ms": 200, "stddev_ms": 20}   (draws below 0 become 0)
--   {"dist": "exponential", "mean_ms": 200}
-- `parameters` lists what registry.lua requires for each; `draw` returns milliseconds.
local latency = {}

latency.distributions = {
  fixed = {
    parameters = { "ms" },
    draw = function(spec)
      return spec.ms
    end,
  },
  uniform = {
    parameters = { "min_ms", "max_ms" },
    draw = function(spec)
      return spec.min_ms + math.random() * (spec.max_ms - spec.min_ms)
    end,
  },
  normal = {
    parameters = { "mean_ms", "stddev_ms" },
    draw = function(spec)
      -- Box-Muller; 1 - random() is in (0, 1], so the logarithm is finite.
      local gaussian = math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
      return math.max(0, spec.mean_ms + spec.stddev_ms * gaussian)
    end,
  },
  exponential = {
    parameters = { "mean_ms" },
    draw = function(spec)
      return -spec.mean_ms * math.log(1 - math.random())
    end,
  },
}

function latency.draw(spec)
  return latency.distributions[spec.dist].draw(spec)
end

return latency
