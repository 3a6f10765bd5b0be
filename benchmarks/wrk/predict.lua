-- wrk script for `abserve bench`: POSTs JSON bodies read from a file and prints
-- a one-line JSON summary in done(), so the harness never parses wrk's prose.
--
--   wrk ... -s predict.lua URL -- BODIES_FILE MODE SALT
--
-- BODIES_FILE: one JSON body per line (abserve's {"features": ...} or an OIP v2
-- request for MLServer: the script never parses them). MODE "repeat": the lines are sent as
-- they are, round robin (the same few inputs: cache hits). MODE "unique": each
-- line holds the placeholders @0@ @1@ @2@ @3@, filled per request with the
-- request counter (two cells), the thread number and SALT (a number that
-- differs per wrk run), so no two requests of a bench carry the same input,
-- even across warm-up and measurement (cache misses). Each filled value is
-- n/100 with n < 1000: a realistic sensor value, distinct in float32.

local counter = 1
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local templates = {}
local unique = false
local salt = 0

local function split_template(line)
  local parts = {}
  local pos = 1
  for i = 0, 3 do
    local marker = "@" .. i .. "@"
    local s, e = string.find(line, marker, pos, true)
    if not s then
      error("unique mode: body template lacks " .. marker)
    end
    table.insert(parts, string.sub(line, pos, s - 1))
    pos = e + 1
  end
  table.insert(parts, string.sub(line, pos))
  return parts
end

function init(args)
  local path, mode = args[1], args[2]
  salt = tonumber(args[3] or "0") % 1000
  unique = (mode == "unique")
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then
      if unique then
        table.insert(templates, split_template(line))
      else
        table.insert(templates, line)
      end
    end
  end
  f:close()
  assert(#templates > 0, "no bodies in " .. path)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  counter = 0
end

local function cell(n)
  return string.format("%.2f", (n % 1000) / 100)
end

function request()
  local i = counter % #templates + 1
  local body
  if unique then
    local p = templates[i]
    body = p[1] .. cell(counter) .. p[2] .. cell(math.floor(counter / 1000)) .. p[3]
      .. cell(tid or 0) .. p[4] .. cell(salt) .. p[5]
  else
    body = templates[i]
  end
  counter = counter + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"abserve_wrk": 1, "duration_us": %d, "requests": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
