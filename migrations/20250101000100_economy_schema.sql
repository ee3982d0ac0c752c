-- The app's own tables: profiles, sessions, custom protocols, achievements, and the token
-- economy (ledger and prices).
--
-- Tables are created with plain CREATE TABLE, not IF NOT EXISTS: on a database that
-- already has a `user_profiles` of another shape, silently skipping the CREATE would leave
-- the money functions of the later migrations running against columns and constraints
-- they do not expect. Failing loudly makes adopting such a database a deliberate step.
--
-- Who may do what (enforced below with privileges and row-level security):
-- * `anon`: nothing.
-- * `authenticated` (a signed-in user through PostgREST): reads their own rows; updates
--   only the journey and settings columns of their profile; reads, edits and deletes
--   their own custom protocols but creates them only through create_custom_protocol()
--   (which charges for them). Tokens, experience, level, streak and plan change only
--   through the SECURITY DEFINER functions of the later migrations.
-- * `service_role` (the server): everything, except that the ledger is append-only; and
--   for every role, a balance changes only together with its ledger row (the triggers on
--   token_ledger below refuse anything else).
--
-- Supabase grants every privilege on new tables and functions in `public` to anon,
-- authenticated and service_role by default, so each object below first revokes
-- everything from those roles and then grants exactly what it should have. The result is
-- the same on plain Postgres, where nothing is granted by default.

-- Keeps `updated_at` current on tables users or the server edit.
create function public.set_updated_at() returns trigger
  language plpgsql
  set search_path = public, pg_temp
  as $$
begin
  new.updated_at := now();
  return new;
end
$$;

------------------------------------------------------------------------------------------
-- Profiles
------------------------------------------------------------------------------------------

create table public.user_profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  display_name text check (char_length(display_name) <= 100),
  -- Progress and balance: written only by the economy functions.
  level integer not null default 1 check (level >= 1),
  experience integer not null default 0 check (experience >= 0),
  tokens integer not null default 0 check (tokens >= 0),
  session_streak integer not null default 0 check (session_streak >= 0),
  -- The user's local day (settings.timezone) of their latest counted session.
  last_session_date date,
  plan text not null default 'free' check (plan in ('free', 'mystic')),
  -- Completed sessions per ego state: {"guardian": 3, "explorer": 1}.
  ego_state_usage jsonb not null default '{}'::jsonb
    check (jsonb_typeof(ego_state_usage) = 'object' and pg_column_size(ego_state_usage) <= 8192),
  -- Journey and settings: written by the user (see the column grants below). Bounded so
  -- a client cannot store arbitrary amounts of data in its profile.
  active_ego_state text check (char_length(active_ego_state) <= 64),
  onboarding_completed boolean not null default false,
  journey_goals jsonb not null default '[]'::jsonb
    check (jsonb_typeof(journey_goals) = 'array' and pg_column_size(journey_goals) <= 16384),
  journey_preferences jsonb not null default '{}'::jsonb
    check (jsonb_typeof(journey_preferences) = 'object' and pg_column_size(journey_preferences) <= 16384),
  -- `settings->>'timezone'` is an IANA zone name ('Europe/Paris'); streaks are counted in
  -- that zone's days, UTC when it is missing or not a zone Postgres knows.
  settings jsonb not null default '{}'::jsonb
    check (jsonb_typeof(settings) = 'object' and pg_column_size(settings) <= 16384),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create trigger user_profiles_set_updated_at
  before update on public.user_profiles
  for each row execute function public.set_updated_at();

-- Creates the profile of an existing auth user if it has none yet. Returns false when
-- there is no such user. Used by the sign-up trigger and by the functions that must
-- work for users created before that trigger existed.
create function public.ensure_user_profile(p_user uuid) returns boolean
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  meta jsonb;
  user_email text;
begin
  select u.email, u.raw_user_meta_data into user_email, meta
    from auth.users u where u.id = p_user;
  if not found then
    return false;
  end if;
  insert into public.user_profiles (id, email, display_name)
  values (
    p_user,
    user_email,
    left(nullif(coalesce(meta ->> 'display_name', meta ->> 'full_name', meta ->> 'name'), ''), 100)
  )
  on conflict (id) do nothing;
  return true;
end
$$;

-- Every new auth user gets a profile (the usual Supabase pattern).
create function public.handle_new_auth_user() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  perform public.ensure_user_profile(new.id);
  return new;
end
$$;

create trigger on_auth_user_created_create_profile
  after insert on auth.users
  for each row execute function public.handle_new_auth_user();

------------------------------------------------------------------------------------------
-- Custom protocols (user-written session scripts; creating one costs tokens)
------------------------------------------------------------------------------------------

create table public.custom_protocols (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  name text not null check (char_length(name) between 1 and 120),
  description text check (char_length(description) <= 2000),
  induction text check (char_length(induction) <= 20000),
  deepener text check (char_length(deepener) <= 20000),
  -- Minutes.
  duration integer check (duration between 1 and 240),
  ego_state text check (char_length(ego_state) <= 64),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index custom_protocols_user_id_created_at_idx
  on public.custom_protocols (user_id, created_at desc);

create trigger custom_protocols_set_updated_at
  before update on public.custom_protocols
  for each row execute function public.set_updated_at();

------------------------------------------------------------------------------------------
-- Sessions (one row per completed session; written only by complete_session())
------------------------------------------------------------------------------------------

create table public.sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  -- The id the client generated for this session: the idempotency key. A retried
  -- completion finds this row and gets `result` back instead of a second reward.
  client_session_id uuid not null,
  ego_state text not null check (char_length(ego_state) between 1 and 64),
  action text check (char_length(action) <= 64),
  -- Seconds.
  duration integer not null check (duration between 0 and 86400),
  protocol_id uuid references public.custom_protocols (id) on delete set null,
  experience_gained integer not null check (experience_gained >= 0),
  tokens_awarded integer not null check (tokens_awarded >= 0),
  -- Hash of the request body: the same id with a different body is a conflict, not a
  -- replay.
  request_fingerprint text not null check (char_length(request_fingerprint) between 1 and 200),
  -- The response given the first time, returned unchanged on replays.
  result jsonb not null,
  completed_at timestamptz not null default now(),
  -- The user's local day the session counted for.
  local_date date not null,
  unique (user_id, client_session_id)
);

create index sessions_user_id_completed_at_idx on public.sessions (user_id, completed_at desc);
create index sessions_protocol_id_idx on public.sessions (protocol_id) where protocol_id is not null;

------------------------------------------------------------------------------------------
-- Achievements (unlocked by complete_session(); each at most once per user)
------------------------------------------------------------------------------------------

create table public.user_achievements (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  achievement_id text not null check (char_length(achievement_id) between 1 and 64),
  unlocked_at timestamptz not null default now(),
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  unique (user_id, achievement_id)
);

------------------------------------------------------------------------------------------
-- Token prices and the ledger
------------------------------------------------------------------------------------------

-- What spending costs. A feature with `unit_chars` is priced per started block of that
-- many characters of input (text-to-speech); one without is priced per use.
create table public.token_prices (
  feature text primary key check (feature ~ '^[a-z][a-z0-9_]{0,63}$'),
  tokens integer not null check (tokens > 0),
  unit_chars integer check (unit_chars > 0)
);

insert into public.token_prices (feature, tokens, unit_chars) values
  ('custom_protocol', 5, null),
  ('elevenlabs_tts', 1, 500);

-- Every change of a user's tokens, append-only. Invariants, enforced by the constraints
-- and triggers below:
-- * each row's balance_after = the previous row's balance_after (0 before the first) +
--   delta, and is never negative;
-- * at commit, user_profiles.tokens = the balance_after of the user's latest row.
-- Together they make user_profiles.tokens = sum(delta) for every user
-- (ledger_mismatches lists any user for whom that is not so).
-- (user_id, reason, reference) is unique, so a reward or debit keyed by a reference can
-- never be written twice, whatever retries or races happen upstream.
create table public.token_ledger (
  id bigint generated always as identity primary key,
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  delta integer not null check (delta <> 0),
  reason text not null check (reason in (
    'session_complete', -- reference: the client session id
    'level_up',         -- reference: 'level:<n>' (each level pays once per user, ever)
    'streak_bonus',     -- reference: 'streak:<n>', the user's n-th bonus (on older rows: the
                        -- client session id that paid it)
    'purchase',         -- Stripe token package; reference: the checkout session id
    'refund',           -- Stripe refund of a purchase (a debit); reference: Stripe's id
    'spend',            -- reference: the caller's idempotency key
    'spend_refund'      -- a spend given back; reference: that spend's reference
  )),
  -- The priced feature, for spends and their refunds only.
  feature text references public.token_prices (feature),
  reference text not null check (char_length(reference) between 1 and 200),
  balance_after integer not null check (balance_after >= 0),
  created_at timestamptz not null default now(),
  unique (user_id, reason, reference),
  check ((reason in ('spend', 'spend_refund')) = (feature is not null)),
  check ((reason in ('spend', 'refund')) = (delta < 0))
);

-- Ledger ids increase in commit order per user (every writer holds the user's profile
-- row lock while inserting), so (user_id, id) finds a user's latest row.
create index token_ledger_user_id_id_idx on public.token_ledger (user_id, id desc);
create index token_ledger_user_id_created_at_idx on public.token_ledger (user_id, created_at desc);

-- Row chain: balance_after must continue from the user's previous row. Runs before the
-- row is visible, so "latest row" is the previous one.
create function public.token_ledger_check_chain() returns trigger
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  previous integer;
begin
  select l.balance_after into previous
    from public.token_ledger l
   where l.user_id = new.user_id
   order by l.id desc
   limit 1;
  if new.balance_after is distinct from coalesce(previous, 0) + new.delta then
    raise exception using
      errcode = '23514',
      message = format('token_ledger: balance_after %s for user %s does not continue the previous balance %s with delta %s',
                       new.balance_after, new.user_id, coalesce(previous, 0), new.delta);
  end if;
  return new;
end
$$;

create trigger token_ledger_check_chain
  before insert on public.token_ledger
  for each row execute function public.token_ledger_check_chain();

-- Balance check at commit: the profile's tokens must equal the latest ledger balance.
-- Deferred, because a function changes both in several statements; firing on both tables
-- catches a balance changed without a ledger row and a ledger row without the balance
-- change, whoever writes them.
create function public.check_tokens_match_ledger() returns trigger
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  uid uuid;
  balance integer;
  ledger_balance integer;
begin
  -- Two statements: NEW has only the firing table's columns.
  if tg_table_name = 'user_profiles' then
    uid := new.id;
  else
    uid := new.user_id;
  end if;
  select p.tokens into balance from public.user_profiles p where p.id = uid;
  if not found then
    return null; -- the user was deleted later in the same transaction
  end if;
  select l.balance_after into ledger_balance
    from public.token_ledger l
   where l.user_id = uid
   order by l.id desc
   limit 1;
  if balance <> coalesce(ledger_balance, 0) then
    raise exception using
      errcode = '23514',
      message = format('user %s has %s tokens but the ledger says %s: token changes must go through the ledger',
                       uid, balance, coalesce(ledger_balance, 0));
  end if;
  return null;
end
$$;

create constraint trigger user_profiles_tokens_match_ledger
  after insert or update of tokens on public.user_profiles
  deferrable initially deferred
  for each row execute function public.check_tokens_match_ledger();

create constraint trigger token_ledger_matches_tokens
  after insert on public.token_ledger
  deferrable initially deferred
  for each row execute function public.check_tokens_match_ledger();

------------------------------------------------------------------------------------------
-- Privileges and row-level security
------------------------------------------------------------------------------------------

alter table public.user_profiles enable row level security;
alter table public.custom_protocols enable row level security;
alter table public.sessions enable row level security;
alter table public.user_achievements enable row level security;
alter table public.token_prices enable row level security;
alter table public.token_ledger enable row level security;

revoke all on table
  public.user_profiles, public.custom_protocols, public.sessions, public.user_achievements,
  public.token_prices, public.token_ledger
  from anon, authenticated, service_role;
revoke all on sequence public.token_ledger_id_seq from anon, authenticated, service_role;

grant select on table
  public.user_profiles, public.custom_protocols, public.sessions, public.user_achievements,
  public.token_prices, public.token_ledger
  to authenticated;

-- Column privileges: the profile's journey and settings only. An UPDATE that names any
-- other column (tokens, experience, level, session_streak, plan, last_session_date, ...)
-- fails with "permission denied".
grant update (display_name, active_ego_state, onboarding_completed,
              journey_goals, journey_preferences, settings)
  on public.user_profiles to authenticated;

-- The protocol's content only; creating goes through create_custom_protocol().
grant update (name, description, induction, deepener, duration, ego_state),
      delete
  on public.custom_protocols to authenticated;

grant all on table
  public.user_profiles, public.custom_protocols, public.sessions, public.user_achievements,
  public.token_prices
  to service_role;
-- The ledger is append-only, for the server too (rows leave only with their user).
grant select, insert on table public.token_ledger to service_role;

create policy "own profile: read" on public.user_profiles
  for select to authenticated using (id = (select auth.uid()));
create policy "own profile: update" on public.user_profiles
  for update to authenticated using (id = (select auth.uid())) with check (id = (select auth.uid()));

create policy "own protocols: read" on public.custom_protocols
  for select to authenticated using (user_id = (select auth.uid()));
create policy "own protocols: update" on public.custom_protocols
  for update to authenticated using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));
create policy "own protocols: delete" on public.custom_protocols
  for delete to authenticated using (user_id = (select auth.uid()));

create policy "own sessions: read" on public.sessions
  for select to authenticated using (user_id = (select auth.uid()));

create policy "own achievements: read" on public.user_achievements
  for select to authenticated using (user_id = (select auth.uid()));

create policy "own ledger: read" on public.token_ledger
  for select to authenticated using (user_id = (select auth.uid()));

create policy "prices: read" on public.token_prices
  for select to authenticated using (true);

-- Internal functions: not callable through PostgREST.
revoke all on function public.set_updated_at() from public, anon, authenticated, service_role;
revoke all on function public.ensure_user_profile(uuid) from public, anon, authenticated, service_role;
revoke all on function public.handle_new_auth_user() from public, anon, authenticated, service_role;
revoke all on function public.token_ledger_check_chain() from public, anon, authenticated, service_role;
revoke all on function public.check_tokens_match_ledger() from public, anon, authenticated, service_role;
