-- The achievement rules, and the count of completed sessions they read. complete_session
-- (20250106000000_session_integrity.sql) evaluates them in PL/pgSQL and writes only the
-- achievements a session newly reaches.

-- Completed sessions: written only by complete_session (like level and experience, it is
-- not in the column grants, so clients cannot change it).
alter table public.user_profiles
  add column sessions_completed integer not null default 0 check (sessions_completed >= 0);

-- (Counted from the sessions table for profiles imported with their history.)
update public.user_profiles p
   set sessions_completed = (select count(*) from public.sessions s where s.user_id = p.id)
 where exists (select 1 from public.sessions s where s.user_id = p.id);

-- The achievement rules: [id, metric, threshold] rows. An achievement is unlocked (once)
-- by the session after which its metric first reaches the threshold. Metrics: sessions
-- (completed sessions), streak (days), level, ego_states (distinct ego states used).
-- A constant, inlined where it is used. A migration that adds a rule must also record it
-- for the profiles that already reach it (as the statement after this function does):
-- complete_session only writes achievements a session newly reaches.
create function public.achievement_rules() returns text[]
  language sql
  immutable
  as $$
  select array[
    -- id               metric        threshold
    ['first_session', 'sessions',   '1'],
    ['sessions_10',   'sessions',   '10'],
    ['sessions_50',   'sessions',   '50'],
    ['sessions_100',  'sessions',   '100'],
    ['streak_7',      'streak',     '7'],
    ['streak_30',     'streak',     '30'],
    ['level_5',       'level',      '5'],
    ['level_10',      'level',      '10'],
    ['ego_explorer',  'ego_states', '5']
  ]
$$;

-- complete_session writes only the achievements a session newly reaches; that is all of
-- them only if every achievement reached by a profile's current values is already
-- recorded. Profiles imported with values the old client wrote could lack some: this
-- statement records them (run it again after importing profiles by hand).
insert into public.user_achievements (user_id, achievement_id, metadata)
select p.id, rules[i][1], '{"backfilled": true}'::jsonb
  from public.user_profiles p,
       (select public.achievement_rules() as rules) as r,
       generate_subscripts(r.rules, 1) as i
 where (case rules[i][2]
          when 'sessions' then p.sessions_completed
          when 'streak' then p.session_streak
          when 'level' then p.level
          when 'ego_states' then (select count(*) from jsonb_object_keys(p.ego_state_usage))
        end) >= rules[i][3]::integer
on conflict (user_id, achievement_id) do nothing;

revoke all on function public.achievement_rules() from public, anon, authenticated, service_role;
