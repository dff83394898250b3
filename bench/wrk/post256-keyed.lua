-- The 256-byte POST of post256.lua with a header that is new on every request:
-- `Idempotency-Key: <run>-<n>` (the keyed path's first arrival: claim, forward,
-- store), or with KEY_HEADER=x-sequence a field of the same size that the gateway
-- only forwards (the unkeyed baseline, with the same work for wrk).
-- Usage: wrk -t1 -c64 -d5s -s bench/wrk/post256-keyed.lua URL -- RUN_ID [HEADER_NAME]
local body = '{"id": 12345, "user": "alice", "amount": 1.0, "currency": "EUR", "tags": ["a", "b"], "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
local run = "run"
local name = "Idempotency-Key"
local n = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  run = args[1] or run
  name = args[2] or name
end

function request()
  n = n + 1
  headers[name] = string.format("%s-%012d", run, n)
  return wrk.format("POST", nil, headers, body)
end
