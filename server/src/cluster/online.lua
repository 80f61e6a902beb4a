-- A node reports how many users it has present in a room and the likes
-- it counted since its last report, and learns how many users the other
-- nodes have and the room's like total. Entries of nodes that stopped
-- reporting (a node that died) expire after the time to live, so the
-- room's count corrects itself without them.
--
-- KEYS[1]  rc:{ROOM}:online       hash: node -> users present there
-- KEYS[2]  rc:{ROOM}:online:exp   sorted set: node -> when its entry expires (ms)
-- KEYS[3]  rc:{ROOM}:likes        the room's like total
-- KEYS[4]  rc:{ROOM}:page         hash: node -> the first page of its users (JSON)
-- ARGV[1]  this node's id
-- ARGV[2]  users present here (0 removes the entry)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  time to live of the entry, ms
-- ARGV[5]  likes counted here since the last report
-- ARGV[6]  time to live of the like total, ms (renewed by every report)
-- ARGV[7]  the first page of this node's users (JSON)
-- Returns { users present on the other nodes, the room's like total, the
-- other nodes' pages }.

local now = tonumber(ARGV[3])
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('HDEL', KEYS[4], node)
  redis.call('ZREM', KEYS[2], node)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[7])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local others = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    others = others + tonumber(all[i + 1])
  end
end
local pages = {}
local all_pages = redis.call('HGETALL', KEYS[4])
for i = 1, #all_pages, 2 do
  if all_pages[i] ~= ARGV[1] then
    pages[#pages + 1] = all_pages[i + 1]
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[4]) * 2)
local likes = redis.call('INCRBY', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return { others, likes, pages }
