//! The Lua scripts that change presence. Each runs atomically in Redis, so whether a peer has
//! just joined or just left is decided in one place, and the `joined`/`left` event is published
//! from inside that same decision: two instances cannot both announce one peer.
//!
//! Channel keys, in this order for `join`, `leave` and `reap`:
//! 1. `conns`: HASH `<node>/<conn>` → peer;  2. `peers`: HASH peer → connection count;
//! 3. `meta`: HASH peer → metadata;  4. `subs`: HASH node → subscriber count;
//! 5. `ver`: HASH `e` (epoch), `s` (sequence);  6. the node's channel SET;  7. the epoch counter.

use std::sync::LazyLock;

use redis::Script;

/// Bumps the channel's version, starting a new epoch when the channel is new, and returns it as
/// `<epoch>.<seq>`; `version()` reads it (`0.0` when nobody is in the channel).
const VERSION: &str = r"
local function bump()
  local seq = redis.call('HINCRBY', KEYS[5], 's', 1)
  local epoch
  if seq == 1 then
    epoch = redis.call('INCR', KEYS[7])
    redis.call('HSET', KEYS[5], 'e', epoch)
  else
    epoch = redis.call('HGET', KEYS[5], 'e')
  end
  return string.format('%d.%d', epoch, seq)
end
local function version()
  local v = redis.call('HMGET', KEYS[5], 'e', 's')
  if not v[1] then return '0.0' end
  return v[1] .. '.' .. v[2]
end
";

/// ARGV: connection key, peer, metadata (or empty), node, channel, `1` for the roster, pub/sub
/// channel. KEYS[8]: the node's beat key: a node that was reaped writes nothing (`gone`), so no
/// entry can land after its reaper read what to remove. A connection already registered changes
/// nothing, so retrying is safe.
const JOIN: &str = r"
if redis.call('EXISTS', KEYS[8]) == 0 then return {'gone', {}} end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
  redis.call('SADD', KEYS[6], ARGV[5])
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
    local v = bump()
    redis.call('PUBLISH', ARGV[7], 'P' .. v .. ';+' .. #ARGV[2] .. ':' .. ARGV[2] .. #ARGV[3] .. ':' .. ARGV[3])
  end
end
if ARGV[6] == '1' then
  return {version(), redis.call('HGETALL', KEYS[3])}
end
return {version(), {}}
";

/// ARGV: connection key, node, channel, pub/sub channel. An unknown connection changes nothing.
const LEAVE: &str = r"
local peer = redis.call('HGET', KEYS[1], ARGV[1])
if not peer then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[4], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('SREM', KEYS[6], ARGV[3])
end
if redis.call('HINCRBY', KEYS[2], peer, -1) <= 0 then
  redis.call('HDEL', KEYS[2], peer)
  redis.call('HDEL', KEYS[3], peer)
  local v = bump()
  redis.call('PUBLISH', ARGV[4], 'P' .. v .. ';-' .. #peer .. ':' .. peer)
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[5]) end
return 1
";

/// Removes a dead node's connections from one channel, with one `left` for every peer that had
/// no connection elsewhere. ARGV: node, pub/sub channel.
const REAP: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1] .. '/'
local out = {}
for i = 1, #all, 2 do
  local f, peer = all[i], all[i + 1]
  if string.sub(f, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], f)
    if redis.call('HINCRBY', KEYS[2], peer, -1) <= 0 then
      redis.call('HDEL', KEYS[2], peer)
      redis.call('HDEL', KEYS[3], peer)
      out[#out + 1] = '-' .. #peer .. ':' .. peer
    end
  end
end
redis.call('HDEL', KEYS[4], ARGV[1])
if #out > 0 then
  local v = bump()
  redis.call('PUBLISH', ARGV[2], 'P' .. v .. ';' .. table.concat(out))
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[5]) end
return #out
";

/// The roster and its version, read together. Same KEYS as `join` (only 3 and 5 are read).
const ROSTER: &str = r"
return {version(), redis.call('HGETALL', KEYS[3])}
";

/// Publishes, then counts the subscribers on every node: both in one step, so the count matches
/// the joins and leaves Redis ordered before this publish. KEYS: `subs`. ARGV: pub/sub channel,
/// payload.
const PUBLISH_COUNTED: &str = r"
redis.call('PUBLISH', ARGV[1], ARGV[2])
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(n) end
return total
";

/// Publishes a payload to each instance holding a connection of the peer, and returns how many
/// connections it has. KEYS: the peer's SET of `<instance>-<generation>/<conn>`. ARGV: instance
/// channel prefix and suffix, payload.
const TO_PEER: &str = r"
local counts = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(m, '^(%x+)%-')
  if node then counts[node] = (counts[node] or 0) + 1 end
end
local total = 0
for node, c in pairs(counts) do
  redis.call('PUBLISH', ARGV[1] .. node .. ARGV[2], ARGV[3])
  total = total + c
end
return total
";

/// Registers a connection of a peer, unless the node was reaped. KEYS: the node's beat key, the
/// peer's SET, the node's peer SET. ARGV: `<node>/<conn>`, peer. Returns 0 when reaped.
const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
";

/// The heartbeat. KEYS: the beat key, the node SET, the instance's pub/sub channel is ARGV[4].
/// ARGV: TTL in ms, `1` when already registered (then the beat key must still exist), node id.
/// Returns 0 when a registered node's beat key is gone (it was reaped, or Redis lost it).
const BEAT: &str = r"
local set
if ARGV[2] == '1' then
  set = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'XX')
else
  set = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
if not set then return 0 end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'E')
return 1
";

/// Removes a dead node's connections from a peer's SET. ARGV: `<node>/`.
const REAP_PEER: &str = r"
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then redis.call('SREM', KEYS[1], m) end
end
return 0
";

fn with_version(body: &str) -> Script {
    Script::new(&format!("{VERSION}{body}"))
}

pub static JOIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_version(JOIN));
pub static LEAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_version(LEAVE));
pub static REAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_version(REAP));
pub static ROSTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_version(ROSTER));
pub static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_COUNTED));
pub static TO_PEER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TO_PEER));
pub static REAP_PEER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REAP_PEER));
pub static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER));
pub static BEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEAT));
