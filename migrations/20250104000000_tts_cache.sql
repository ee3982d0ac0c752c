-- Voice (issue 6): the shared speech cache and the premium ElevenLabs charge.
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
create function public.tts_cache_get(p_key text, p_ttl_seconds integer)
  returns table (provider text, content_type text, audio bytea)
  language sql
  security definer
  set search_path = public, pg_temp
  as $$
  update public.tts_cache c
     set last_hit_at = now()
   where c.cache_key = p_key
     and c.created_at > now() - make_interval(secs => greatest(p_ttl_seconds, 0))
  returning c.provider, c.content_type, c.audio;
$$;

-- Stores (or replaces) an entry, drops expired ones, then evicts least recently used
-- entries until the cache holds at most p_max_bytes.
-- Returns {"stored": true|false, "evicted": n, "total_bytes": t}.
create function public.tts_cache_put(
  p_key text,
  p_provider text,
  p_content_type text,
  p_audio bytea,
  p_max_bytes bigint,
  p_ttl_seconds integer
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_size integer := octet_length(p_audio);
  v_expired integer;
  v_evicted integer;
  v_total bigint;
begin
  if p_key is null or p_audio is null or p_max_bytes is null or p_ttl_seconds is null then
    raise exception using errcode = '22023', message = 'tts_cache_put needs a key, audio, a bound and a ttl';
  end if;
  -- One put at a time across all instances: eviction sees every committed entry.
  perform pg_advisory_xact_lock(hashtextextended('public.tts_cache', 0));

  delete from public.tts_cache
   where created_at <= now() - make_interval(secs => greatest(p_ttl_seconds, 0));
  get diagnostics v_expired = row_count;

  if v_size = 0 or v_size > p_max_bytes then
    select coalesce(sum(byte_size), 0) into v_total from public.tts_cache;
    return jsonb_build_object('stored', false, 'evicted', v_expired, 'total_bytes', v_total);
  end if;

  insert into public.tts_cache (cache_key, provider, content_type, audio, byte_size)
  values (p_key, p_provider, p_content_type, p_audio, v_size)
  on conflict (cache_key) do update
    set provider = excluded.provider, content_type = excluded.content_type, audio = excluded.audio,
        byte_size = excluded.byte_size, created_at = now(), last_hit_at = now();

  -- Keep the most recently used entries whose running total fits; the new entry is the
  -- most recent, and fits on its own, so it always stays.
  with ranked as (
    select cache_key,
           sum(byte_size) over (order by last_hit_at desc, created_at desc, cache_key) as running
      from public.tts_cache
  )
  delete from public.tts_cache c
   using ranked r
   where c.cache_key = r.cache_key and r.running > p_max_bytes and c.cache_key <> p_key;
  get diagnostics v_evicted = row_count;

  select coalesce(sum(byte_size), 0) into v_total from public.tts_cache;
  return jsonb_build_object('stored', true, 'evicted', v_expired + v_evicted, 'total_bytes', v_total);
end
$$;

-- Charges for a premium ElevenLabs call before it is made: nothing for plan 'mystic',
-- otherwise spend_tokens_for(p_user, 'elevenlabs_tts', p_chars, p_reference) (the price,
-- per started block of characters, lives only in token_prices). Plan check and debit are
-- one statement, so no request slips between them.
-- Returns spend_tokens_for's answer plus "plan" and "charged" (false for mystic), or
-- {"ok":false, "reason":"unknown_user"}.
create function public.premium_tts_charge(p_user uuid, p_chars integer, p_reference text) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_plan text;
begin
  select plan into v_plan from public.user_profiles where id = p_user;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'unknown_user');
  end if;
  if v_plan = 'mystic' then
    return jsonb_build_object('ok', true, 'charged', false, 'plan', v_plan, 'cost', 0);
  end if;
  return public.spend_tokens_for(p_user, 'elevenlabs_tts', p_chars, p_reference)
         || jsonb_build_object('charged', true, 'plan', v_plan);
end
$$;

revoke all on function public.tts_cache_get(text, integer) from public, anon, authenticated, service_role;
revoke all on function public.tts_cache_put(text, text, text, bytea, bigint, integer)
  from public, anon, authenticated, service_role;
revoke all on function public.premium_tts_charge(uuid, integer, text) from public, anon, authenticated, service_role;

grant execute on function public.tts_cache_get(text, integer) to service_role;
grant execute on function public.tts_cache_put(text, text, text, bytea, bigint, integer) to service_role;
grant execute on function public.premium_tts_charge(uuid, integer, text) to service_role;
