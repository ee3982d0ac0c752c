-- The shared tts cache, made hard to flush and cheap to bound.
--
-- Why: with one global lock for puts, a whole-table sum to find what to evict, and
-- least recently used evicted first, every put across all instances would wait on every
-- other, and one user's stream of one-off texts would push out everyone's entries.
--
-- So:
-- * Buckets. The server puts each key in one of p_buckets buckets (from the key's hash)
--   and gives each bucket an equal share of the bound. A bucket's bytes are kept in
--   tts_cache_buckets; a put locks only its bucket's row, so puts in different buckets
--   run side by side, and nothing sums the table.
-- * Eviction walks an index: within the bucket, expired entries first, then entries
--   never hit since they were stored (oldest first), then hit entries (least recently
--   used first). A flood of one-off texts therefore evicts itself before it reaches
--   entries that other requests use.
-- * Entry size is capped by the server (tts_cache_max_entry_bytes) and never exceeds a
--   bucket's share.
-- * When the bucket count changes (the bound or the cap changed), entries of buckets
--   beyond the new count are dropped a few per put.
-- tts_cache_get is unchanged: a hit sets last_hit_at, which is what "hit since stored"
-- means (a put sets created_at = last_hit_at).

-- A cache: emptied rather than migrated (every entry would need its bucket).
delete from public.tts_cache;

alter table public.tts_cache add column bucket smallint not null default 0 check (bucket between 0 and 255);
alter table public.tts_cache alter column bucket drop default;

drop index public.tts_cache_last_hit_at_idx;
create index tts_cache_eviction_idx on public.tts_cache (bucket, (last_hit_at > created_at), last_hit_at);
create index tts_cache_expiry_idx on public.tts_cache (bucket, created_at);

create table public.tts_cache_buckets (
  bucket smallint primary key check (bucket between 0 and 255),
  bytes bigint not null default 0 check (bytes >= 0)
);
alter table public.tts_cache_buckets enable row level security;
revoke all on table public.tts_cache_buckets from anon, authenticated, service_role;
grant all on table public.tts_cache_buckets to service_role;

-- Stores (or replaces) an entry in p_bucket, then evicts within that bucket until it
-- holds at most p_bucket_max_bytes. Returns {"stored", "evicted", "bucket_bytes"}.
create function public.tts_cache_store(
  p_key text,
  p_provider text,
  p_content_type text,
  p_audio bytea,
  p_bucket integer,
  p_buckets integer,
  p_bucket_max_bytes bigint,
  p_ttl_seconds integer
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_size integer := octet_length(p_audio);
  v_expires_before timestamptz := now() - make_interval(secs => greatest(p_ttl_seconds, 0));
  v_old public.tts_cache;
  v_total bigint;
  v_freed bigint;
  v_evicted integer := 0;
  v_orphan smallint;
  v_gone integer;
begin
  if p_key is null or p_audio is null or p_bucket_max_bytes is null or p_ttl_seconds is null
     or p_buckets is null or p_buckets not between 1 and 256 or p_bucket is null or p_bucket not between 0 and p_buckets - 1 then
    raise exception using errcode = '22023', message = 'tts_cache_store: invalid arguments';
  end if;
  if v_size = 0 or v_size > p_bucket_max_bytes then
    return jsonb_build_object('stored', false, 'evicted', 0, 'bucket_bytes', null);
  end if;

  -- The bucket's lock: every put into this bucket waits here, no other put does.
  insert into public.tts_cache_buckets (bucket) values (p_bucket) on conflict do nothing;
  select bytes into v_total from public.tts_cache_buckets where bucket = p_bucket for update;

  select * into v_old from public.tts_cache where cache_key = p_key for update;
  if found and v_old.bucket <> p_bucket then
    -- Stored under an older bucket count; it ages out there, and this answer is not cached.
    return jsonb_build_object('stored', false, 'evicted', 0, 'bucket_bytes', v_total);
  end if;
  insert into public.tts_cache (cache_key, provider, content_type, audio, byte_size, bucket)
  values (p_key, p_provider, p_content_type, p_audio, v_size, p_bucket)
  on conflict (cache_key) do update
    set provider = excluded.provider, content_type = excluded.content_type, audio = excluded.audio,
        byte_size = excluded.byte_size, created_at = now(), last_hit_at = now();
  v_total := v_total - coalesce(v_old.byte_size, 0) + v_size;

  -- Expired entries of this bucket go whatever the size (the expiry index).
  with gone as (
    delete from public.tts_cache
     where bucket = p_bucket and created_at <= v_expires_before and cache_key <> p_key
    returning byte_size
  )
  select count(*), coalesce(sum(byte_size), 0) into v_evicted, v_freed from gone;
  v_total := v_total - v_freed;

  -- Then one entry at a time in eviction order (the eviction index), until it fits.
  while v_total > p_bucket_max_bytes loop
    delete from public.tts_cache
     where cache_key = (
       select c.cache_key from public.tts_cache c
        where c.bucket = p_bucket and c.cache_key <> p_key
        order by (c.last_hit_at > c.created_at), c.last_hit_at
        limit 1)
    returning byte_size into v_freed;
    if not found then
      -- Only the new entry is left: the count is exactly its size (this also repairs a
      -- count that drifted, e.g. after rows were deleted by hand).
      v_total := v_size;
      exit;
    end if;
    v_total := v_total - v_freed;
    v_evicted := v_evicted + 1;
  end loop;
  update public.tts_cache_buckets set bytes = greatest(v_total, 0) where bucket = p_bucket;

  -- Buckets beyond the current count: drop a few of their entries. Their locks are
  -- taken after this bucket's, in ascending order, as every put does: no deadlock.
  select bucket into v_orphan from public.tts_cache_buckets
   where bucket >= p_buckets and bytes > 0 order by bucket limit 1;
  if v_orphan is not null then
    perform 1 from public.tts_cache_buckets where bucket = v_orphan for update;
    with gone as (
      delete from public.tts_cache
       where cache_key in (select cache_key from public.tts_cache where bucket = v_orphan limit 8)
      returning byte_size
    )
    select count(*), coalesce(sum(byte_size), 0) into v_gone, v_freed from gone;
    update public.tts_cache_buckets
       set bytes = case when v_gone < 8 then 0 else greatest(0, bytes - v_freed) end
     where bucket = v_orphan;
  end if;

  return jsonb_build_object('stored', true, 'evicted', v_evicted, 'bucket_bytes', v_total);
end
$$;

revoke all on function public.tts_cache_store(text, text, text, bytea, integer, integer, bigint, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.tts_cache_store(text, text, text, bytea, integer, integer, bigint, integer) to service_role;
