-- Supabase compatibility for plain Postgres.
--
-- The later migrations are written for Supabase: they grant to the roles `anon`,
-- `authenticated` and `service_role`, reference `auth.users` and call `auth.uid()` in
-- row-level security policies. On a Supabase project all of that already exists and this
-- file changes nothing (every step checks first). On any other Postgres (local
-- development, CI, the test host) it creates the minimum those migrations need, behaving
-- the way Supabase's own objects do:
--
-- * PostgREST runs each request as `anon` or `authenticated` and publishes the verified
--   JWT claims in the setting `request.jwt.claims` (older versions: one setting per
--   claim, `request.jwt.claim.sub`, ...). `auth.uid()`, `auth.role()` and `auth.jwt()`
--   read them back, so a test can act as a user with
--     set role authenticated;
--     set request.jwt.claims = '{"sub":"<uuid>","role":"authenticated"}';
-- * `service_role` is the server's role and bypasses row-level security.

create extension if not exists pgcrypto;

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

do $$
begin
  if to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;
  end if;

  -- Only the columns this project reads; Supabase's real table has many more.
  if to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key,
      email text,
      raw_user_meta_data jsonb default '{}'::jsonb,
      created_at timestamptz default now()
    );
  end if;

  -- The same definitions Supabase ships: the claim-per-setting form first, then the
  -- JSON document.
  if to_regproc('auth.uid') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
  end if;

  if to_regproc('auth.role') is null then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
  end if;

  if to_regproc('auth.jwt') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
  end if;
end
$$;
