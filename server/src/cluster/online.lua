-- A node reports, for one room, how many users it has present, the first
-- page of them and the likes its room instance has counted, and learns how
-- many users the other nodes have, their pages and the room's like total.
-- Entries of nodes that stopped reporting (a node that died) expire after
-- the time to live, so the room's count corrects itself without them.
--
-- KEYS[1]  rc:{ROOM}:online       hash: node -> users present there
-- KEYS[2]  rc:{ROOM}:online:exp   sorted set: node -> when its entry expires (ms)
-- KEYS[3]  rc:{ROOM}:likes        hash: room instance -> the likes it counted
-- KEYS[4]  rc:{ROOM}:page         hash: node -> the first page of its users (JSON)
-- KEYS[5]  rc:{ROOM}:addr         hash: node -> the address clients reach it at
-- ARGV[1]  this node's id
-- ARGV[2]  users present here (0 removes the entry)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  time to live of the entry, ms
-- ARGV[5]  this room instance's id (the node's id and the room's epoch)
-- ARGV[6]  the likes this room instance has counted so far: a total, not a
--          change, so a report run twice or sent again after a lost answer
--          counts nothing twice
-- ARGV[7]  time to live of the like totals, ms (renewed by every report)
-- ARGV[8]  the first page of this node's users (JSON)
-- ARGV[9]  the address clients reach this node at ('' if none is known)
-- ARGV[10] how many of the other nodes' pages to return (0: none; a node
--          asks now and then, not every second, so that a room on many
--          nodes does not read every page every second)
-- Returns { users present on the other nodes, the room's like total, the
-- other nodes' pages }.

local now = tonumber(ARGV[3])
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('HDEL', KEYS[4], node)
  redis.call('HDEL', KEYS[5], node)
  redis.call('ZREM', KEYS[2], node)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[8])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[9])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
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
local want = tonumber(ARGV[10])
if want > 0 then
  local all_pages = redis.call('HGETALL', KEYS[4])
  for i = 1, #all_pages, 2 do
    if #pages >= want then break end
    if all_pages[i] ~= ARGV[1] then
      pages[#pages + 1] = all_pages[i + 1]
    end
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[4]) * 2)
redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[4]) * 2)
if tonumber(ARGV[6]) > tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0') then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
end
redis.call('PEXPIRE', KEYS[3], ARGV[7])
local likes = 0
for _, n in ipairs(redis.call('HVALS', KEYS[3])) do
  likes = likes + tonumber(n)
end
return { others, likes, pages }
