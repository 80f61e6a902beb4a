-- A node reports how many users it has present in a room, and learns how
-- many the other nodes have. Entries of nodes that stopped reporting (a node
-- that died) expire after the time to live, so the room's count corrects
-- itself without them.
--
-- KEYS[1]  rc:{ROOM}:online       hash: node -> users present there
-- KEYS[2]  rc:{ROOM}:online:exp   sorted set: node -> when its entry expires (ms)
-- ARGV[1]  this node's id
-- ARGV[2]  users present here (0 removes the entry)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  time to live of the entry, ms
-- Returns the users present on the other nodes.

local now = tonumber(ARGV[3])
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('ZREM', KEYS[2], node)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local others = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    others = others + tonumber(all[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
return others
