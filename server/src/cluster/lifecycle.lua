-- Opens a room for the fleet. A room the platform closed starts a new
-- incarnation, as on a node alone: a new epoch (ARGV[1], hex), numbered
-- from 1, its old stream and ranking gone; every node that still carries
-- the closed one sees the new epoch in the message ids of what follows.
--
-- KEYS[1]  the room's lifecycle     rc:{ROOM}:lifecycle ("open" or "closed")
-- KEYS[2]  the room's epoch         rc:{ROOM}:epoch
-- KEYS[3..6] its counter, stream, ranking and ranked names
-- Returns 1 when a closed room was reopened.
local reopened = 0
if redis.call('GET', KEYS[1]) == 'closed' then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  reopened = 1
end
redis.call('SET', KEYS[1], 'open')
return reopened
