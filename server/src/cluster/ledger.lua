-- The fleet's gift ledger: a user's balance and their gifts' idempotency
-- keys, changed together in one atomic step, so that a key sent to two
-- nodes at once charges once and a balance never goes negative.
--
-- KEYS[1]  rc:user:{USER}:balance       the balance (absent: 0)
-- KEYS[2]  rc:user:{USER}:gift:KEY      hash: state (charged | settled),
--                                       amount, lease (ms), owner, receipt (JSON)
-- ARGV[1]  op: debit | credit | refund | settle | release
-- ARGV[2]  amount (debit, credit)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  lease, ms: how long a charged key is in flight before another
--          send of it may sequence it (its node died in between)
-- ARGV[5]  time to live of a key, ms
-- ARGV[6]  receipt (settle)
-- ARGV[7]  the send holding the lease (debit, refund, release): a refund or
--          release by another send changes nothing
--
-- A balance stays below 2^53, which Lua's numbers hold exactly.
-- Returns { outcome, balance, receipt }.

local op = ARGV[1]
local now = tonumber(ARGV[3])
local balance = tonumber(redis.call('GET', KEYS[1]) or '0')

if op == 'credit' then
  local amount = tonumber(ARGV[2])
  if balance + amount >= 9007199254740992 then
    return { 'overflow', balance, '' }
  end
  return { 'credited', redis.call('INCRBY', KEYS[1], amount), '' }
end

local key = redis.call('HMGET', KEYS[2], 'state', 'amount', 'lease', 'receipt', 'owner')
local state, held, lease, receipt, owner = key[1], key[2], key[3], key[4], key[5]

if op == 'debit' then
  if state == 'settled' then
    return { 'repeat', balance, receipt }
  end
  if state == 'charged' then
    if tonumber(lease) > now then
      return { 'repeat', balance, '' }
    end
    -- Charged, never sequenced, no longer in flight: the caller sequences it.
    redis.call('HSET', KEYS[2], 'lease', now + tonumber(ARGV[4]), 'owner', ARGV[7])
    return { 'charged', balance, '' }
  end
  local amount = tonumber(ARGV[2])
  if balance < amount then
    return { 'insufficient', balance, '' }
  end
  balance = redis.call('DECRBY', KEYS[1], amount)
  redis.call('HSET', KEYS[2], 'state', 'charged', 'amount', amount, 'lease', now + tonumber(ARGV[4]),
    'owner', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return { 'charged', balance, '' }
end

if op == 'refund' then
  if state == 'charged' and owner == ARGV[7] then
    balance = redis.call('INCRBY', KEYS[1], held)
    redis.call('DEL', KEYS[2])
  end
  return { 'refunded', balance, '' }
end

if op == 'settle' then
  if state then
    redis.call('HSET', KEYS[2], 'state', 'settled', 'receipt', ARGV[6], 'lease', 0)
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
  return { 'settled', balance, '' }
end

if op == 'release' then
  if state == 'charged' and owner == ARGV[7] then
    redis.call('HSET', KEYS[2], 'lease', 0)
  end
  return { 'released', balance, '' }
end

return redis.error_reply('unknown ledger op ' .. op)
