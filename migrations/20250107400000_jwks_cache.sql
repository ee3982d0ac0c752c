-- The project's JWKS, fetched from Supabase Auth (supabase_jwks_url) and shared by every
-- component instance: Spin makes a fresh instance per request, so the cache and the
-- "at most one fetch per interval" bound can only live here (shared/src/auth/remote.rs).
-- Every function returns one row (Spin 4.0.x hangs on zero rows).

create table public.jwks_cache (
  url text primary key,
  -- The last document fetched and parsed successfully; null until the first one.
  document jsonb,
  fetched_at timestamptz,
  -- When a request last won the right to fetch (successful or not): the bound on fetches.
  attempted_at timestamptz not null
);
alter table public.jwks_cache enable row level security;
revoke all on table public.jwks_cache from anon, authenticated, service_role;

-- {"document": jsonb|null, "fetch": bool}: the cached document for p_url, and whether the
-- caller is to fetch a new one now. It is when the document is missing, older than
-- p_max_age_seconds, or has no key with kid p_kid (null: any kid will do), and no fetch
-- for p_url was granted in the last p_min_refresh_seconds. The grant is one conditional
-- upsert: concurrent callers queue on the row and only the first sees the interval
-- passed, so a flood of unknown kids costs one fetch per interval, across all instances.
create function public.jwks_cache_lookup(
  p_url text, p_kid text, p_max_age_seconds integer, p_min_refresh_seconds integer
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_document jsonb;
  v_fetched_at timestamptz;
  v_fetch boolean := false;
begin
  select c.document, c.fetched_at into v_document, v_fetched_at
    from public.jwks_cache c
   where c.url = p_url;
  if v_document is null
     or v_fetched_at < now() - make_interval(secs => greatest(p_max_age_seconds, 0))
     or (p_kid is not null and not exists (
           select 1 from jsonb_array_elements(
             case when jsonb_typeof(v_document -> 'keys') = 'array' then v_document -> 'keys' else '[]'::jsonb end) k
            where k ->> 'kid' = p_kid))
  then
    insert into public.jwks_cache as c (url, attempted_at)
    values (p_url, clock_timestamp())
    on conflict (url) do update set attempted_at = excluded.attempted_at
      where c.attempted_at <= clock_timestamp() - make_interval(secs => greatest(p_min_refresh_seconds, 1))
    returning true into v_fetch;
  end if;
  return jsonb_build_object('document', v_document, 'fetch', coalesce(v_fetch, false));
end
$$;

revoke all on function public.jwks_cache_lookup(text, text, integer, integer) from public, anon, authenticated, service_role;
grant execute on function public.jwks_cache_lookup(text, text, integer, integer) to service_role;

-- Stores a freshly fetched document for p_url. {"stored": true}.
create function public.jwks_cache_store(p_url text, p_document jsonb) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  insert into public.jwks_cache as c (url, document, fetched_at, attempted_at)
  values (p_url, p_document, clock_timestamp(), clock_timestamp())
  on conflict (url) do update set document = excluded.document, fetched_at = excluded.fetched_at;
  return jsonb_build_object('stored', true);
end
$$;

revoke all on function public.jwks_cache_store(text, jsonb) from public, anon, authenticated, service_role;
grant execute on function public.jwks_cache_store(text, jsonb) to service_role;
