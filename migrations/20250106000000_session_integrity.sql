-- Completing a session: rewards only for sessions that could have happened, and ego
-- states bounded to the app's set (made-up names neither unlock ego_explorer nor grow
-- the profile).
--
-- The server cannot know that a person meditated. It refuses what is physically
-- impossible and bounds what is merely unlikely:
-- * Time adds up. A completion claims the wall-clock interval [started_at, ended_at]
--   (ended_at = now unless the app sends started_at). A user's rewarded sessions never
--   overlap by more than a small tolerance. An overlapping session is recorded and earns
--   nothing.
-- * Daily caps. Per local day (settings.timezone), only so many sessions earn rewards and
--   only so many minutes earn XP. Past a cap the session is recorded and earns nothing.
-- * One at a time. Every check runs after the user's profile row is locked, in the same
--   statement that writes the rewards, so concurrent completions for one user are
--   checked one after another against everything committed before.
-- * Exactly once stays: a replay answers what the first completion answered, rewarded or
--   not.
--
-- The reward rules live in complete_session (20250107000000_reward_days.sql, its
-- constants at the top), achievement_rules() (20250105000000_achievement_rules.sql) and
-- the ego_states rows.

------------------------------------------------------------------------------------------
-- The app's ego states
------------------------------------------------------------------------------------------

-- The ego states the app offers. Only these are counted in ego_state_usage and towards
-- ego_explorer: a session in any other state is recorded and rewarded as usual but not
-- counted, so made-up names can neither unlock ego_explorer nor grow ego_state_usage
-- (bounded by a check) until completions fail. When the app adds a state, add its row
-- (`insert into public.ego_states (name) values ('…')`); later sessions count it.
-- Names are lower case; a session's state is matched case-insensitively.
create table public.ego_states (
  name text primary key check (name ~ '^[a-z0-9_-]{1,64}$')
);

insert into public.ego_states (name) values
  ('guardian'), ('rebel'), ('healer'), ('explorer'), ('mystic'), ('sage'),
  ('child'), ('performer'), ('lover'), ('creator'), ('warrior'), ('shadow');

alter table public.ego_states enable row level security;
revoke all on table public.ego_states from anon, authenticated, service_role;
grant select on table public.ego_states to authenticated;
grant all on table public.ego_states to service_role;
create policy "ego states: read" on public.ego_states
  for select to authenticated using (true);

------------------------------------------------------------------------------------------
-- When each session ran, and whether it earned anything
------------------------------------------------------------------------------------------

-- ended_at: the end of the wall-clock interval the session claims (it started at
-- ended_at - duration). Existing rows ended when they were recorded.
-- rewarded / unrewarded_reason: a session that overlapped a rewarded one or came past a
-- daily cap is kept (the app shows it) but granted nothing.
alter table public.sessions
  add column ended_at timestamptz,
  add column rewarded boolean not null default true,
  add column unrewarded_reason text
    check (unrewarded_reason in ('overlaps_previous_session', 'daily_session_cap', 'daily_xp_minutes_cap')),
  add constraint sessions_rewarded_has_no_reason check (rewarded = (unrewarded_reason is null));

update public.sessions set ended_at = completed_at where ended_at is null;

alter table public.sessions
  alter column ended_at set default now(),
  alter column ended_at set not null;

-- The overlap check: a user's rewarded sessions ending after a given time.
create index sessions_user_id_rewarded_ended_at_idx
  on public.sessions (user_id, ended_at) where rewarded;

-- The daily counters: what the user's rewarded sessions of reward_day (a local day) have
-- earned so far. 20250107000000_reward_days.sql replaces them with public.reward_days
-- and drops them.
alter table public.user_profiles
  add column reward_day date,
  add column reward_day_sessions integer not null default 0 check (reward_day_sessions >= 0),
  add column reward_day_xp_minutes integer not null default 0 check (reward_day_xp_minutes >= 0);
