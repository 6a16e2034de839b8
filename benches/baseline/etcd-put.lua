-- wrk script for the etcd baseline: every request is a put of a new key through etcd's v3 JSON
-- gateway (POST /v3/kv/put, key and value in base64).
local counter = 0
local thread_tag = 0

setup = function(thread)
    thread_tag = thread_tag + 1
    thread:set("tag", string.format("%c", 96 + thread_tag))
end

request = function()
    counter = counter + 1
    -- A letter and 7 digits: 8 characters of the base64 alphabet are a valid encoding, so
    -- the key needs no encoder.
    local key = (tag or "a") .. string.format("%07d", counter % 10000000)
    local body = '{"key": "' .. key .. '", "value": "dmFsdWU="}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
end
