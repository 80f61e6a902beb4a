-- A room's live quiz in a fleet: every node checks and counts answers here,
-- so one answer per user per question holds fleet-wide and the tallies are
-- exact. The same rules as the embedded quiz (`quiz/mod.rs`).
--
-- KEYS[1]  rc:{ROOM}:quiz   hash: id, rounds, revive, delay, asked, open,
--                           revealed, ended, players, remaining
-- Keys of the same slot, named from KEYS[1]:
--   ..:q:N   question N: id, options, correct, closes, phase, c0..c9
--   ..:a:N   question N's answers: user -> option
--   ..:p     players: user -> "in:REVIVES_LEFT" | "out"
--   ..:v:N   verdicts after question N's reveal (written by the revealing
--            node, which sets `deciding` to 0 in the meta hash when done)
-- ARGV[1]  op; the rest per op (below).

local meta = KEYS[1]
local op = ARGV[1]

local function q(n) return meta .. ':q:' .. n end
local function a(n) return meta .. ':a:' .. n end
local players = meta .. ':p'

-- The index of a question id "QUIZ-qN", if it is this quiz's.
local function index_of(qid)
  local id = redis.call('HGET', meta, 'id')
  if not id then return nil end
  local prefix = id .. '-q'
  if string.sub(qid, 1, #prefix) ~= prefix then return nil end
  return tonumber(string.sub(qid, #prefix + 1))
end

-- create ID ROUNDS REVIVE DELAY TTL_MS
if op == 'create' then
  if redis.call('HGET', meta, 'ended') == '0' then return { 'running' } end
  local asked = tonumber(redis.call('HGET', meta, 'asked') or '0')
  for n = 1, asked do
    redis.call('DEL', q(n), a(n), meta .. ':v:' .. n)
  end
  redis.call('DEL', meta, players)
  redis.call('HSET', meta, 'id', ARGV[2], 'rounds', ARGV[3], 'revive', ARGV[4], 'delay', ARGV[5],
    'asked', 0, 'open', '', 'revealed', 0, 'deciding', 0, 'ended', 0, 'players', 0, 'remaining', 0)
  redis.call('PEXPIRE', meta, ARGV[6])
  return { 'ok' }
end

-- status
if op == 'status' then
  local m = redis.call('HMGET', meta, 'id', 'rounds', 'asked', 'open', 'players', 'remaining', 'ended',
    'revive', 'delay')
  if not m[1] then return { 'no_quiz' } end
  return { 'ok', m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9] }
end

-- start NOW OPTIONS CORRECT WINDOW_MS LATEST_DISPLAY('' for the default) TTL_MS
if op == 'start' then
  local m = redis.call('HMGET', meta, 'id', 'rounds', 'asked', 'open', 'ended', 'delay')
  if not m[1] or m[5] ~= '0' then return { 'no_quiz' } end
  if m[4] ~= '' or (redis.call('HGET', meta, 'deciding') or '0') ~= '0' then return { 'question_open' } end
  local index = tonumber(m[3]) + 1
  if index > tonumber(m[2]) then return { 'no_rounds' } end
  local now, delay = tonumber(ARGV[2]), tonumber(m[6])
  local closes = now + tonumber(ARGV[5]) + delay
  local latest = ARGV[6]
  if latest == '' then latest = tostring(now + 2000 + delay) end
  local id = m[1] .. '-q' .. index
  -- Nothing of an earlier quiz's question of this index counts.
  redis.call('DEL', q(index), a(index), meta .. ':v:' .. index)
  redis.call('HSET', q(index), 'id', id, 'options', ARGV[3], 'correct', ARGV[4], 'closes', closes,
    'phase', 'open')
  for k = 0, tonumber(ARGV[3]) - 1 do redis.call('HSET', q(index), 'c' .. k, 0) end
  redis.call('PEXPIRE', q(index), ARGV[7])
  redis.call('HSET', meta, 'asked', index, 'open', id)
  return { 'ok', index, id, closes, latest, m[2] }
end

-- withdraw QID: the question just started, when the room could not sequence it
if op == 'withdraw' then
  local n = index_of(ARGV[2])
  if n and redis.call('HGET', meta, 'open') == ARGV[2] and redis.call('EXISTS', a(n)) == 0 then
    redis.call('DEL', q(n))
    redis.call('HSET', meta, 'asked', n - 1, 'open', '')
  end
  return { 'ok' }
end

-- answer TTL_MS then USER QID OPTION AT (the answer's server time, ms),
-- repeated. Returns OUTCOME OPTION per answer.
if op == 'answer' then
  local m = redis.call('HMGET', meta, 'ended', 'revealed', 'revive')
  local out = {}
  for i = 3, #ARGV, 4 do
    local user, qid, option, now = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local n = index_of(qid)
    local question = n and redis.call('HMGET', q(n), 'phase', 'closes', 'options', 'id')
    if not n or not question[1] or question[4] ~= qid then
      out[#out + 1] = 'unknown'; out[#out + 1] = 0
    else
      local first = redis.call('HGET', a(n), user)
      if first then
        out[#out + 1] = 'already'; out[#out + 1] = tonumber(first)
      elseif question[1] ~= 'open' or now > tonumber(question[2]) or m[1] ~= '0' then
        out[#out + 1] = 'too_late'; out[#out + 1] = 0
      elseif option >= tonumber(question[3]) then
        out[#out + 1] = 'invalid'; out[#out + 1] = 0
      else
        local p = redis.call('HGET', players, user)
        if p == 'out' then
          out[#out + 1] = 'eliminated'; out[#out + 1] = 0
        elseif not p and tonumber(m[2]) > 0 then
          -- Missed a revealed question: out from the start.
          redis.call('HSET', players, user, 'out')
          redis.call('HINCRBY', meta, 'players', 1)
          out[#out + 1] = 'eliminated'; out[#out + 1] = 0
        else
          if not p then
            redis.call('HSET', players, user, 'in:' .. m[3])
            redis.call('HINCRBY', meta, 'players', 1)
            redis.call('HINCRBY', meta, 'remaining', 1)
          end
          redis.call('HSET', a(n), user, option)
          redis.call('PEXPIRE', a(n), ARGV[2])
          redis.call('HINCRBY', q(n), 'c' .. option, 1)
          out[#out + 1] = 'accepted'; out[#out + 1] = option
        end
      end
    end
  end
  redis.call('PEXPIRE', players, ARGV[2])
  return out
end

-- close QID: the reveal's first step; answers stop here. Returns the
-- index, the correct option, the rounds and the counts.
-- A reveal whose deciding was cut short (its node or Redis failed) closes
-- again and is decided again; players already decided are skipped.
if op == 'close' then
  local n = index_of(ARGV[2])
  if not n then return { 'no_question' } end
  local phase = redis.call('HGET', q(n), 'phase')
  local deciding = redis.call('HGET', meta, 'deciding') or '0'
  if phase ~= 'open' and not (phase == 'revealed' and deciding == tostring(n)) then
    return { 'no_question' }
  end
  local question = redis.call('HMGET', q(n), 'options', 'correct')
  redis.call('HSET', q(n), 'phase', 'revealed')
  redis.call('HSET', meta, 'open', '', 'revealed', n, 'deciding', n)
  local out = { 'ok', n, question[2], redis.call('HGET', meta, 'rounds') }
  for k = 0, tonumber(question[1]) - 1 do
    out[#out + 1] = redis.call('HGET', q(n), 'c' .. k)
  end
  return out
end

-- end
if op == 'end' then
  if not redis.call('HGET', meta, 'id') then return { 'no_quiz' } end
  redis.call('HSET', meta, 'ended', 1, 'open', '')
  return { 'ok', redis.call('HGET', meta, 'id') }
end

return redis.error_reply('unknown quiz op ' .. op)
