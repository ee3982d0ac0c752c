-- Completing a session: the reward rules, in one function.
--
-- Superseded: 20250105000000_faster_complete_session.sql replaces complete_session with
-- a version that gives the same answers with fewer statements, and holds the rules now.

-- Today's date in the given IANA time zone, or in UTC when the name is missing or is not
-- a zone Postgres knows. Only zone names are accepted: AT TIME ZONE would also take
-- POSIX offsets such as 'UTC+5', whose sign is the reverse of what anyone means.
create function public.local_today(p_timezone text) returns date
  language plpgsql
  stable
  set search_path = public, pg_temp
  as $$
begin
  if p_timezone ~ '^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_+-]+)*$' then
    begin
      return (now() at time zone p_timezone)::date;
    exception when invalid_parameter_value then
      -- 'time zone "..." not recognized': fall through to UTC.
    end;
  end if;
  return (now() at time zone 'UTC')::date;
end
$$;

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
create function public.complete_session(
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
  -- here; the code below only applies them.
  ----------------------------------------------------------------------------------------
  xp_base             constant integer := 10;  -- XP for every completed session,
  xp_per_minute       constant integer := 2;   -- plus this much per whole minute,
  xp_minutes_cap      constant integer := 60;  -- counting at most this many minutes.
  xp_per_level        constant integer := 100; -- level = 1 + floor(experience / this)
  tokens_per_level    constant integer := 5;   -- for each level reached (once per level)
  tokens_per_session  constant integer := 2;   -- for every completed session
  streak_bonus_every  constant integer := 7;   -- when a session extends the streak to a
  streak_bonus_tokens constant integer := 10;  -- multiple of 7 days: this many tokens
  -- Achievements: id => {metric: threshold}; unlocked (once) by the first session after
  -- which the metric reaches the threshold. Metrics: sessions (completed sessions),
  -- streak (days), level, ego_states (distinct ego states used).
  achievement_rules   constant jsonb := '{
    "first_session": {"sessions": 1},
    "sessions_10":   {"sessions": 10},
    "sessions_50":   {"sessions": 50},
    "sessions_100":  {"sessions": 100},
    "streak_7":      {"streak": 7},
    "streak_30":     {"streak": 30},
    "level_5":       {"level": 5},
    "level_10":      {"level": 10},
    "ego_explorer":  {"ego_states": 5}
  }';
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
  v_sessions_done bigint;
  v_balance integer;
  v_rewards jsonb := '[]';
  v_unlocked jsonb;
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
         ego_state_usage = v_usage
   where id = p_user;

  -- 8. Achievements reached now and not unlocked before.
  select count(*) + 1 into v_sessions_done from public.sessions where user_id = p_user;

  with metrics(metric, value) as (
    values ('sessions', v_sessions_done),
           ('streak', v_streak::bigint),
           ('level', v_level::bigint),
           ('ego_states', (select count(*) from jsonb_object_keys(v_usage)))
  ), unlocked as (
    insert into public.user_achievements (user_id, achievement_id, metadata)
    select p_user, rule.key, jsonb_build_object('session_id', v_session_id)
      from jsonb_each(achievement_rules) as rule
     cross join lateral jsonb_each_text(rule.value) as requirement(metric, threshold)
      join metrics on metrics.metric = requirement.metric
     where metrics.value >= requirement.threshold::bigint
    on conflict (user_id, achievement_id) do nothing
    returning achievement_id
  )
  select coalesce(jsonb_agg(achievement_id order by achievement_id), '[]'::jsonb)
    into v_unlocked
    from unlocked;

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

revoke all on function public.local_today(text) from public, anon, authenticated, service_role;
revoke all on function public.complete_session(uuid, uuid, text, text, integer, uuid, text)
  from public, anon, authenticated, service_role;
grant execute on function public.complete_session(uuid, uuid, text, text, integer, uuid, text) to service_role;
