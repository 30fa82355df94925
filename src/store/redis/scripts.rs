//! The Lua scripts that run inside Redis, atomically: [`SAVE`], the compare-and-set on the
//! generation that fences every save and removal, and [`RELEASE`], the compare-and-delete that frees a lease
//! only for its holder.

use std::sync::LazyLock;

use redis::Script;

/// Saves a token set, or removes it, only if the stored generation is the expected one.
///
/// `KEYS[1]`: the tokens key; `KEYS[2]`: the lock key. `ARGV[1]`: the token set as JSON, or
/// empty to remove it (`"tokens": null` is written: the generation stays, see
/// [`TokenStore::remove`](crate::TokenStore::remove)); `ARGV[2]`: the expected generation (`0`
/// for "no tokens"); `ARGV[3]`: the caller's owner id, or empty without a lease.
///
/// Returns `{status, generation, held}`: status `1` written (generation is the new one), `0`
/// superseded (generation is the stored one), `2` refused because the tokens were removed as
/// that generation, `-1` the stored value is unreadable (nothing written). `held` is `1` when the lock still holds `ARGV[3]`. The stored JSON is assembled as a
/// string, so the token set is kept byte for byte as serde wrote it.
pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stored = redis.call('GET', KEYS[1])
local generation = 0
local removed = false
if stored then
  local ok, decoded = pcall(cjson.decode, stored)
  if not ok or type(decoded) ~= 'table' or type(decoded['generation']) ~= 'number' then
    return {-1, 0, 0}
  end
  generation = decoded['generation']
  removed = decoded['tokens'] == nil or decoded['tokens'] == cjson.null
end
local held = 0
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  held = 1
end
if generation ~= tonumber(ARGV[2]) then
  if removed then
    return {2, generation, held}
  end
  return {0, generation, held}
end
generation = generation + 1
local tokens = ARGV[1]
if tokens == '' then
  tokens = 'null'
end
redis.call('SET', KEYS[1], '{"generation":' .. string.format('%d', generation) .. ',"tokens":' .. tokens .. '}')
return {1, generation, held}
"#,
    )
});

/// Releases a lease only if it is still the caller's. `KEYS[1]`: the lock key; `ARGV[1]`: the
/// owner id. Returns `1` when released, `0` when the lease had already expired or passed on.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});
