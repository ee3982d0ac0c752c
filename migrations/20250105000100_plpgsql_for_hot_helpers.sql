-- Two helpers on hot paths rewritten from LANGUAGE sql to PL/pgSQL, same behaviour.
--
-- Why: a SQL function with a SET clause is never inlined, and its body is parsed and
-- planned again on every call (the plan lives only as long as the calling expression).
-- PL/pgSQL keeps each statement's plan for the connection's lifetime. Measured with
-- pgbench: stripe_finish_event ran on every webhook event, tts_cache_get on every tts
-- request.

create or replace function public.stripe_finish_event(p_event_id text, p_outcome jsonb) returns jsonb
  language plpgsql
  set search_path = public, pg_temp
  as $$
begin
  update public.stripe_events set outcome = p_outcome ->> 'outcome' where event_id = p_event_id;
  return p_outcome;
end
$$;

create or replace function public.tts_cache_get(p_key text, p_ttl_seconds integer)
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
