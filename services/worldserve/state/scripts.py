"""The session store's Lua scripts (:class:`~worldserve.state.store.SessionStore` registers them):
each runs in one Redis Cluster slot, on a session's two keys, the tenant's index or the archive's
due set (the keys: :mod:`worldserve.state.store`)."""

# KEYS: record, log. ARGV: expected step, action JSON, latent, frame PNG, time, request id ("" =
# none), most steps not yet archived (0: no bound), step 0's latent ("" = none: set only when
# absent, the first step encodes it), the model's resume data of the step ("" = none), how many
# steps resume data is kept (0: no bound; else the one of step n - keep is dropped). Returns
# {new step, 0}, {-1, 0} (no session), {-2, current step} (moved on), {-3, step} (this request id
# already landed as that step: only the TTLs refreshed, a write, so that a WAIT after it covers that
# step too), or {-4, archived step} (the unarchived tail is full: nothing written).
APPEND = """
local cur = redis.call('HGET', KEYS[1], 'step')
if not cur then return {-1, 0} end
cur = tonumber(cur)
if ARGV[6] ~= '' then
  local done = redis.call('HGET', KEYS[2], 'r:' .. ARGV[6])
  if done then
    local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
    return {-3, tonumber(done)}
  end
end
if cur ~= tonumber(ARGV[1]) then return {-2, cur} end
local n = cur + 1
local bound = tonumber(ARGV[7])
if bound > 0 then
  local archived = tonumber(redis.call('HGET', KEYS[1], 'archived') or '-1')
  if n - archived > bound then return {-4, archived} end
end
redis.call('HSET', KEYS[2], 'a:' .. n, ARGV[2], 'z:' .. n, ARGV[3], 'f:' .. n, ARGV[4])
if ARGV[8] ~= '' then redis.call('HSETNX', KEYS[2], 'z:0', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[2], 'k:' .. n, ARGV[9]) end
local keep = tonumber(ARGV[10])
if keep > 0 then redis.call('HDEL', KEYS[2], 'k:' .. (n - keep)) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'r:' .. ARGV[6], n, 'q:' .. n, ARGV[6]) end
redis.call('HSET', KEYS[1], 'step', n, 'updated_at', ARGV[5])
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return {n, 0}
"""

# KEYS: log, record. ARGV: request id. Returns {step, frame PNG} of the step that request id landed
# as (the session's TTLs refreshed: a write, so that a WAIT after it covers that step), or nil.
RECORDED = """
local k = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if not k then return nil end
local ttl = tonumber(redis.call('HGET', KEYS[2], 'ttl_s'))
if ttl then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return {tonumber(k), redis.call('HGET', KEYS[1], 'f:' .. k)}
"""

# KEYS: the tenant's index. ARGV: session id, time, limit (0: none). Returns the index's size
# with the new id (reserved) or 0 (full: nothing written).
RESERVE = """
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: record, log. ARGV: the archived step this trim expects, the newly archived step, hot window
# (steps), request ids kept (steps). Moves ``archived`` on, then drops what Redis no longer needs:
# the action, latent, frame and resume data of archived steps older than the hot window (a
# prefill's context: a latent may be packed against its frame, so the frame stays with it), and the request ids of steps older than the kept ones. Returns the new archived step, -1 (no session) or -2 (another
# archiver moved it first: nothing changed).
TRIM = """
local cur = redis.call('HGET', KEYS[1], 'step')
if not cur then return -1 end
cur = tonumber(cur)
local archived = tonumber(redis.call('HGET', KEYS[1], 'archived') or '-1')
if archived ~= tonumber(ARGV[1]) then return -2 end
local new = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'archived', new)
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '-1')
local upto = math.min(new, cur - tonumber(ARGV[3]))
for n = trimmed + 1, upto do
  redis.call('HDEL', KEYS[2], 'a:' .. n, 'z:' .. n, 'f:' .. n, 'k:' .. n)
end
if upto > trimmed then redis.call('HSET', KEYS[1], 'trimmed', upto) end
local rupto = cur - tonumber(ARGV[4])
local rtrim = tonumber(redis.call('HGET', KEYS[1], 'rid_trimmed') or '-1')
for n = rtrim + 1, rupto do
  local rid = redis.call('HGET', KEYS[2], 'q:' .. n)
  if rid then redis.call('HDEL', KEYS[2], 'r:' .. rid, 'q:' .. n) end
end
if rupto > rtrim then redis.call('HSET', KEYS[1], 'rid_trimmed', rupto) end
return new
"""

# KEYS: the archive's due set. ARGV: now, lease (s), most to claim. Claims due sessions: each is
# pushed ``lease`` seconds ahead (an archiver that dies mid-chunk leaves it to the next one).
CLAIM = """
local got = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(got) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m) end
return got
"""
