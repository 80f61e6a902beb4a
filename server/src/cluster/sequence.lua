-- Sequences a batch of a room's events, keeps them in the room's stream and
-- publishes them, in one atomic step: every node sees the room's events in
-- sequence order, and history holds exactly what was published.
--
-- KEYS[1]  the room's sequence counter     rc:{ROOM}:seq
-- KEYS[2]  the room's event stream          rc:{ROOM}:log
-- KEYS[3]  the room's epoch                 rc:{ROOM}:epoch
-- KEYS[4]  each node's last batch           rc:{ROOM}:batches (hash: node -> "ID FIRST")
-- KEYS[5]  the room's gift ranking          rc:{ROOM}:rank (sorted set: user -> value)
-- KEYS[6]  the ranked users' names          rc:{ROOM}:rank:names (hash: user -> name)
-- ARGV[1]  the room's channel               rc:{ROOM}:events
-- ARGV[2]  the stream's length bound (approximate trim)
-- ARGV[3]  the epoch this node's room follows (hex)
-- ARGV[4]  PUBLISH, or SPUBLISH in a Redis Cluster (the channel shares the
--          keys' hash tag, so it lives in their slot)
-- ARGV[5]  this node's id, and ARGV[6] this batch's number on it: a batch
--          run again (a client library's retry after a lost answer) is
--          answered as the first time and not appended twice
-- ARGV[7]  the last sequence number this node's room has seen in that epoch
-- ARGV[8]  a new epoch (hex), greater than ARGV[3], for when Redis lost the
--          room's numbering
-- ARGV[9]  K, the batch's gifts, then K triples (user, name, value): added to
--          the room's ranking with the numbering, so every node ranks the
--          same gifts and a room that starts following reads the totals
-- ARGV[10 + 3K..] the events, each an encoded RoomEvent without seq and
--          message id
--
-- Redis lost the room's numbering when its epoch is gone (flushed,
-- restarted without persistence, evicted) or its counter is behind what
-- this node has seen in that epoch (a failover to a replica that had not
-- caught up). Numbering on would give sequence numbers and message ids
-- again that members already hold, and their nodes would drop the new
-- events as repeats. So the room takes the new epoch instead, numbered
-- from 1, its old stream gone; every node sees the epoch change in the
-- message ids and starts the room's new incarnation.
--
-- Each event gets its sequence number and message id appended as protobuf
-- fields 2 and 3: a decoder takes the last value of a field, so the bytes
-- need no other change. The stream entry id is "SEQ-1", so a range of
-- sequence numbers is a range of ids. The batch is published once, as the
-- events each prefixed by its length (4 bytes, big-endian).
-- Returns { first sequence number, epoch, 1 if the numbering was lost }.

local function varint(n)
  local out = {}
  repeat
    local byte = n % 128
    n = math.floor(n / 128)
    if n > 0 then byte = byte + 128 end
    out[#out + 1] = string.char(byte)
  until n == 0
  return table.concat(out)
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local last = redis.call('HGET', KEYS[4], ARGV[5])
if last then
  local id, first = string.match(last, '^(%d+) (%d+)$')
  if id == ARGV[6] then
    return { tonumber(first), redis.call('GET', KEYS[3]), 0 }
  end
end

local epoch = redis.call('GET', KEYS[3])
local lost = 0
if not epoch or (epoch == ARGV[3] and (tonumber(redis.call('GET', KEYS[1])) or 0) < tonumber(ARGV[7])) then
  epoch = ARGV[8]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[5], KEYS[6])
  lost = 1
end

local gifts = tonumber(ARGV[9])
local base = 9 + 3 * gifts
for i = 0, gifts - 1 do
  local at = 10 + 3 * i
  redis.call('ZINCRBY', KEYS[5], ARGV[at + 2], ARGV[at])
  redis.call('HSET', KEYS[6], ARGV[at], ARGV[at + 1])
end
if gifts > 0 then
  redis.call('PEXPIRE', KEYS[5], 86400000)
  redis.call('PEXPIRE', KEYS[6], 86400000)
end

local n = #ARGV - base
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
local batch = {}
for i = 1, n do
  local seq = first + i - 1
  local id = epoch .. '-' .. seq
  local event = ARGV[base + i] .. '\16' .. varint(seq) .. '\26' .. varint(#id) .. id
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-1', 'e', event)
  batch[#batch + 1] = be32(#event) .. event
end
redis.call(ARGV[4], ARGV[1], table.concat(batch))
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6] .. ' ' .. first)
redis.call('PEXPIRE', KEYS[4], 86400000)
return { first, epoch, lost }
