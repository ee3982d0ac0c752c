-- Completing a session, second version: the same rules and answers, fewer statements.
--
-- Measured with pgbench and the benchmark (BENCHMARKS.md): the first version ran a
-- statement per call to count the user's sessions (growing with their history) and one
-- to evaluate every achievement rule, although almost every session crosses no
-- threshold. Now the profile carries the count of completed sessions, the rules are
-- evaluated in PL/pgSQL, and the achievements statement runs only for the sessions that
-- reach a threshold for the first time.
--
-- The reward rules now live here: the constants at the top of complete_session and
-- achievement_rules(), below. The earlier migration's copy is history.

-- Completed sessions: written only by complete_session (like level and experience, it is
-- not in the column grants, so clients cannot change it).
alter table public.user_profiles
  add column sessions_completed integer not null default 0 check (sessions_completed >= 0);

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

-- complete_session below writes only the achievements a session newly reaches; that is
-- all of them only if every achievement reached by a profile's current values is
-- already recorded. Profiles from before could lack some (reached by values the old
-- client wrote), so record those now, once. (Profiles imported later by hand need the
-- same statement.)
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

-- Records a completed session and grants its rewards, exactly once per
-- (p_user, p_client_session_id). Called by the session-complete endpoint as one
-- statement; only the server (service_role) may call it.
--
-- p_duration_seconds: 0..86400. p_ego_state: 1-64 of [A-Za-z0-9_-]. p_action: at most
-- 64 characters or null. p_fingerprint: a hash of the request body, so a retry can be
-- told apart from a different request that reuses the id. Arguments outside these
-- bounds raise SQLSTATE 22023 (the endpoint validates them first).
--
-- Returns one of
--   {"outcome":"created", "replayed":false, "session_id", "client_session_id",
--    "experience_gained", "tokens_awarded",
--    "rewards":[{"reason":"session_complete","tokens":2},
--               {"reason":"level_up","tokens":5,"level":2}, ...,
--               {"reason":"streak_bonus","tokens":10,"streak":7}],
--    "level_before", "level_after", "streak", "streak_extended", "local_date",
--    "achievements_unlocked":["first_session", ...],
--    "totals":{"tokens","experience","level","session_streak"}}
--   the same document with "outcome":"replayed", "replayed":true: this id was completed
--       before with the same fingerprint; nothing is granted again, and the values are
--       those of the first completion
--   {"outcome":"conflict", "session_id"}  this id was completed with another fingerprint
--   {"outcome":"unknown_protocol"}        p_protocol_id is no protocol
--   {"outcome":"forbidden_protocol"}      p_protocol_id is another user's protocol
--   {"outcome":"unknown_user"}            p_user is not an auth user
-- In the last four cases no session, reward or achievement is written.
--
-- "streak_extended" is true when this session was the user's first of their local day,
-- so it advanced the streak (to streak + 1 after a session yesterday, else to 1); false
-- for later sessions the same day, which leave the streak as it is.
create or replace function public.complete_session(
  p_user uuid,
  p_client_session_id uuid,
  p_ego_state text,
  p_action text,
  p_duration_seconds integer,
  p_protocol_id uuid,
  p_fingerprint text
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  ----------------------------------------------------------------------------------------
  -- THE REWARD RULES (design.md, "Rewards for a completed session"). All of them live
  -- here and in achievement_rules() above; the code below only applies them.
  ----------------------------------------------------------------------------------------
  xp_base             constant integer := 10;  -- XP for every completed session,
  xp_per_minute       constant integer := 2;   -- plus this much per whole minute,
  xp_minutes_cap      constant integer := 60;  -- counting at most this many minutes.
  xp_per_level        constant integer := 100; -- level = 1 + floor(experience / this)
  tokens_per_level    constant integer := 5;   -- for each level reached (once per level)
  tokens_per_session  constant integer := 2;   -- for every completed session
  streak_bonus_every  constant integer := 7;   -- when a session extends the streak to a
  streak_bonus_tokens constant integer := 10;  -- multiple of 7 days: this many tokens
  ----------------------------------------------------------------------------------------

  v_profile public.user_profiles;
  v_existing public.sessions;
  v_protocol_owner uuid;
  v_session_id uuid := gen_random_uuid();
  v_today date;
  v_xp integer;
  v_experience integer;
  v_level integer;
  v_streak integer;
  v_streak_extended boolean;
  v_usage jsonb;
  v_balance integer;
  v_rewards jsonb := '[]';
  v_unlocked jsonb := '[]';
  v_rule text[];
  v_before bigint;
  v_after bigint;
  v_reached text[] := '{}';
  v_result jsonb;
begin
  -- The endpoint validates these; checked again because this function guards balances.
  if p_user is null or p_client_session_id is null
     or p_duration_seconds is null or p_duration_seconds not between 0 and 86400
     or p_ego_state is null or p_ego_state !~ '^[A-Za-z0-9_-]{1,64}$'
     or char_length(p_action) > 64
     or p_fingerprint is null or char_length(p_fingerprint) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'complete_session: argument out of range';
  end if;

  -- 1. Lock the user's profile (creating it for users who predate the sign-up trigger).
  --    Every change of a user's tokens or progress takes this lock first, so completions
  --    for one user run one after another and each statement below sees all that was
  --    committed before: concurrent completions lose no update, and concurrent repeats
  --    of one id find the first one's row in step 2.
  select * into v_profile from public.user_profiles where id = p_user for update;
  if not found then
    if not public.ensure_user_profile(p_user) then
      return jsonb_build_object('outcome', 'unknown_user');
    end if;
    select * into v_profile from public.user_profiles where id = p_user for update;
  end if;

  -- 2. A repeat of this client session id: the first answer, or a conflict.
  select * into v_existing
    from public.sessions
   where user_id = p_user and client_session_id = p_client_session_id;
  if found then
    if v_existing.request_fingerprint = p_fingerprint then
      return v_existing.result || jsonb_build_object('outcome', 'replayed', 'replayed', true);
    end if;
    return jsonb_build_object('outcome', 'conflict', 'session_id', v_existing.id);
  end if;

  -- 3. The protocol, if any, must be the user's own. KEY SHARE keeps it from being
  --    deleted before the session row referencing it is written.
  if p_protocol_id is not null then
    select user_id into v_protocol_owner
      from public.custom_protocols
     where id = p_protocol_id
       for key share;
    if not found then
      return jsonb_build_object('outcome', 'unknown_protocol');
    end if;
    if v_protocol_owner <> p_user then
      return jsonb_build_object('outcome', 'forbidden_protocol');
    end if;
  end if;

  -- 4. Experience and level. A level is never lowered (profiles written by the old
  --    client may hold a level ahead of their experience), and only levels above the
  --    one held pay tokens, so each level pays once.
  v_xp := xp_base + xp_per_minute * least(p_duration_seconds / 60, xp_minutes_cap);
  v_experience := v_profile.experience + v_xp;
  v_level := greatest(v_profile.level, 1 + v_experience / xp_per_level);

  -- 5. Streak, in the user's local days.
  v_today := public.local_today(v_profile.settings ->> 'timezone');
  if v_profile.last_session_date is null or v_today > v_profile.last_session_date then
    v_streak_extended := true;
    v_streak := case when v_today = v_profile.last_session_date + 1
                     then v_profile.session_streak + 1
                     else 1 end;
  else
    -- Not the first session of the local day (or the user moved their time zone west
    -- and it is still an already-counted day there): the streak stands.
    v_streak_extended := false;
    v_streak := v_profile.session_streak;
  end if;

  -- 6. Tokens: one ledger row per reward, each continuing the balance.
  v_balance := v_profile.tokens + tokens_per_session;
  insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
  values (p_user, tokens_per_session, 'session_complete', p_client_session_id::text, v_balance);
  v_rewards := v_rewards || jsonb_build_object('reason', 'session_complete', 'tokens', tokens_per_session);

  for level_reached in v_profile.level + 1 .. v_level loop
    v_balance := v_balance + tokens_per_level;
    insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
    values (p_user, tokens_per_level, 'level_up', 'level:' || level_reached, v_balance);
    v_rewards := v_rewards || jsonb_build_object('reason', 'level_up', 'tokens', tokens_per_level,
                                                 'level', level_reached);
  end loop;

  if v_streak_extended and v_streak % streak_bonus_every = 0 then
    v_balance := v_balance + streak_bonus_tokens;
    insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
    values (p_user, streak_bonus_tokens, 'streak_bonus', p_client_session_id::text, v_balance);
    v_rewards := v_rewards || jsonb_build_object('reason', 'streak_bonus', 'tokens', streak_bonus_tokens,
                                                 'streak', v_streak);
  end if;

  -- 7. Ego-state usage and the profile.
  v_usage := jsonb_set(v_profile.ego_state_usage, array[p_ego_state],
                       to_jsonb(coalesce((v_profile.ego_state_usage ->> p_ego_state)::integer, 0) + 1));

  update public.user_profiles
     set experience = v_experience,
         level = v_level,
         tokens = v_balance,
         session_streak = v_streak,
         last_session_date = case when v_streak_extended then v_today else last_session_date end,
         ego_state_usage = v_usage,
         sessions_completed = sessions_completed + 1
   where id = p_user;

  -- 8. Achievements whose metric reaches its threshold with this session. Only those not
  --    reached before it are written: every earlier completion wrote the ones it reached
  --    (the migration that introduced this rule backfilled older profiles), so a
  --    statement is spent only on the few sessions that cross a threshold.
  foreach v_rule slice 1 in array public.achievement_rules() loop
    case v_rule[2]
      when 'sessions' then
        v_before := v_profile.sessions_completed;
        v_after := v_profile.sessions_completed + 1;
      when 'streak' then
        v_before := v_profile.session_streak;
        v_after := v_streak;
      when 'level' then
        v_before := v_profile.level;
        v_after := v_level;
      when 'ego_states' then
        v_before := jsonb_array_length(jsonb_path_query_array(v_profile.ego_state_usage, '$.*'));
        v_after := jsonb_array_length(jsonb_path_query_array(v_usage, '$.*'));
    end case;
    if v_after >= v_rule[3]::bigint and v_before < v_rule[3]::bigint then
      v_reached := v_reached || v_rule[1];
    end if;
  end loop;

  if cardinality(v_reached) > 0 then
    with unlocked as (
      insert into public.user_achievements (user_id, achievement_id, metadata)
      select p_user, achievement, jsonb_build_object('session_id', v_session_id)
        from unnest(v_reached) as achievement
      on conflict (user_id, achievement_id) do nothing
      returning achievement_id
    )
    select coalesce(jsonb_agg(achievement_id order by achievement_id), '[]'::jsonb)
      into v_unlocked
      from unlocked;
  end if;

  -- 9. The session, with the answer a replay will return.
  v_result := jsonb_build_object(
    'outcome', 'created',
    'replayed', false,
    'session_id', v_session_id,
    'client_session_id', p_client_session_id,
    'experience_gained', v_xp,
    'tokens_awarded', v_balance - v_profile.tokens,
    'rewards', v_rewards,
    'level_before', v_profile.level,
    'level_after', v_level,
    'streak', v_streak,
    'streak_extended', v_streak_extended,
    'local_date', v_today,
    'achievements_unlocked', v_unlocked,
    'totals', jsonb_build_object(
      'tokens', v_balance,
      'experience', v_experience,
      'level', v_level,
      'session_streak', v_streak
    )
  );

  insert into public.sessions (id, user_id, client_session_id, ego_state, action, duration, protocol_id,
                               experience_gained, tokens_awarded, request_fingerprint, result, local_date)
  values (v_session_id, p_user, p_client_session_id, p_ego_state, p_action, p_duration_seconds, p_protocol_id,
          v_xp, v_balance - v_profile.tokens, p_fingerprint, v_result, v_today);

  return v_result;
end
$$;


revoke all on function public.complete_session(uuid, uuid, text, text, integer, uuid, text)
  from public, anon, authenticated, service_role;
grant execute on function public.complete_session(uuid, uuid, text, text, integer, uuid, text) to service_role;

revoke all on function public.achievement_rules() from public, anon, authenticated, service_role;
