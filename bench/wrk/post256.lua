-- POSTs one fixed JSON body of exactly 256 bytes to the target URL.
-- Usage: wrk -t1 -c32 -d10s -s bench/wrk/post256.lua http://127.0.0.1:18080/
-- wrk itself reports any answer that is not 2xx/3xx ("Non-2xx or 3xx responses").
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id": 12345, "user": "alice", "amount": 1.0, "currency": "EUR", "tags": ["a", "b"], "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'

