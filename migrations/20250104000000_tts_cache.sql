-- Voice: the shared speech cache and the premium ElevenLabs charge.
--
-- The cache (public.tts_cache) is shared by every instance and every user: entries hold
-- synthesised audio keyed by a hash of the normalised request, never a user id.
--
-- Bound and expiry, both given by the caller from Spin variables:
-- * expiry (tts_cache_ttl_seconds): an entry is served for that long after it was
--   synthesised (created_at), however often it is hit; expired entries are never served
--   and are deleted by the next put;
-- * size (tts_cache_max_bytes): after each put, the least recently used entries are
--   deleted until the sum of byte_size is at most the bound. Puts take a transaction-level
--   advisory lock, so concurrent puts from many instances evict one after another and the
--   bound holds exactly at every commit. An entry larger than the bound is not stored.
-- Each function is one statement for its caller.

-- The cached audio for p_key when it is younger than p_ttl_seconds, marking the hit (for
-- LRU eviction). No row when absent or expired.
-- PL/pgSQL, not LANGUAGE sql: a SQL function with a SET clause is never inlined and its
-- body is planned again on every call; PL/pgSQL keeps each statement's plan for the
-- connection's lifetime (measured with pgbench on this hot path).
create function public.tts_cache_get(p_key text, p_ttl_seconds integer)
  returns table (provider text, content_type text, audio bytea)
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  return query
  update public.tts_cache c
     set last_hit_at = now()
   where c.cache_key = p_key
     and c.created_at > now() - make_interval(secs => greatest(p_ttl_seconds, 0))
  returning c.provider, c.content_type, c.audio;
end
$$;

revoke all on function public.tts_cache_get(text, integer) from public, anon, authenticated, service_role;

grant execute on function public.tts_cache_get(text, integer) to service_role;
