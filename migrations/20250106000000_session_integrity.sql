-- Completing a session: rewards only for sessions that could have happened (issue 20),
-- and ego states bounded to the app's set (issue 21, finding 8b).
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
-- The reward rules live here: the constants at the top of complete_session below,
-- achievement_rules() (20250105000000_achievement_rules.sql) and the ego_states rows.

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
-- earned so far. Written only by complete_session (not in the column grants). The day
-- only moves forward, so moving one's time zone west never reopens a day.
alter table public.user_profiles
  add column reward_day date,
  add column reward_day_sessions integer not null default 0 check (reward_day_sessions >= 0),
  add column reward_day_xp_minutes integer not null default 0 check (reward_day_xp_minutes >= 0);

------------------------------------------------------------------------------------------
-- complete_session
------------------------------------------------------------------------------------------

-- Records a completed session and grants its rewards, exactly once per
-- (p_user, p_client_session_id). Called by the session-complete endpoint as one
-- statement; only the server (service_role) may call it.
--
-- p_duration_seconds: 0..86400. p_ego_state: 1-64 of [A-Za-z0-9_-]. p_action: at most
-- 64 characters or null. p_fingerprint: a hash of the request body, so a retry can be
-- told apart from a different request that reuses the id. Arguments outside these
-- bounds raise SQLSTATE 22023 (the endpoint validates them first).
-- p_started_at: when the session started, if the app says so (for a completion sent
-- late, e.g. after being offline); null means it ended now.
--
-- Returns one of
--   {"outcome":"created", "replayed":false, "session_id", "client_session_id",
--    "rewarded":true|false, "reason":null|"overlaps_previous_session"|
--        "daily_session_cap"|"daily_xp_minutes_cap",
--    "started_at", "ended_at", "xp_minutes", "experience_gained", "tokens_awarded",
--    "rewards":[{"reason":"session_complete","tokens":2},
--               {"reason":"level_up","tokens":5,"level":2}, ...,
--               {"reason":"streak_bonus","tokens":10,"streak":7}],
--    "level_before", "level_after", "streak", "streak_extended", "local_date",
--    "achievements_unlocked":["first_session", ...],
--    "daily":{"date","rewarded_sessions","rewarded_sessions_cap","xp_minutes","xp_minutes_cap"},
--    "totals":{"tokens","experience","level","session_streak"}}
--       An unrewarded session ("rewarded":false) is recorded with zero XP and tokens, no
--       rewards, no achievements, and changes nothing on the profile: no streak, no
--       ego-state count, no session count.
--   the same document with "outcome":"replayed", "replayed":true: this id was completed
--       before with the same fingerprint; nothing is granted again, and the values are
--       those of the first completion
--   {"outcome":"conflict", "session_id"}  this id was completed with another fingerprint
--   {"outcome":"unknown_protocol"}        p_protocol_id is no protocol
--   {"outcome":"forbidden_protocol"}      p_protocol_id is another user's protocol
--   {"outcome":"invalid_started_at", "problem":"in_future"|"too_old"|"before_account",
--    "max_backdate_seconds" (with too_old)}
--       p_started_at + duration is later than now (beyond the tolerance), or
--       p_started_at is more than max_backdate ago, or before the user's profile was
--       created
--   {"outcome":"unknown_user"}            p_user is not an auth user
-- In the last five cases no session, reward or achievement is written.
--
-- "streak_extended" is true when this session was the user's first rewarded one of their
-- local day, so it advanced the streak (to streak + 1 after a session yesterday, else to
-- 1); false for later sessions the same day, which leave the streak as it is.
create function public.complete_session(
  p_user uuid,
  p_client_session_id uuid,
  p_ego_state text,
  p_action text,
  p_duration_seconds integer,
  p_protocol_id uuid,
  p_fingerprint text,
  p_started_at timestamptz
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  ----------------------------------------------------------------------------------------
  -- THE REWARD RULES. All of them live here, in achievement_rules()
  -- (20250105000000_achievement_rules.sql) and in the ego_states rows; the code
  -- below only applies them.
  ----------------------------------------------------------------------------------------
  xp_base             constant integer := 10;  -- XP for every rewarded session,
  xp_per_minute       constant integer := 2;   -- plus this much per whole minute,
  xp_minutes_cap      constant integer := 60;  -- counting at most this many minutes.
  xp_per_level        constant integer := 100; -- level = 1 + floor(experience / this)
  tokens_per_level    constant integer := 5;   -- for each level reached (once per level)
  tokens_per_session  constant integer := 2;   -- for every rewarded session
  streak_bonus_every  constant integer := 7;   -- when a session extends the streak to a
  streak_bonus_tokens constant integer := 10;  -- multiple of 7 days: this many tokens
  -- Time must add up. Rewarded sessions may overlap by at most this much (clock and
  -- network slack: a completion arrives a little after the session ended).
  overlap_tolerance   constant interval := interval '30 seconds';
  -- A session shorter than this takes this much wall-clock time for the overlap check,
  -- so bursts of zero-length "sessions" cannot all pass. More than the tolerance, or two
  -- of them at the same moment would not overlap by more than it.
  min_session_slot    constant interval := interval '60 seconds';
  -- How long ago an explicit started_at may be (a completion queued while offline).
  max_backdate        constant interval := interval '24 hours';
  -- Daily caps, per local day (settings.timezone): a real person does several sessions
  -- a day, rarely more than a few hours of them.
  daily_sessions_cap  constant integer := 12;  -- rewarded sessions
  daily_minutes_cap   constant integer := 240; -- whole minutes that earn XP
  ----------------------------------------------------------------------------------------

  v_profile public.user_profiles;
  v_existing public.sessions;
  v_protocol_owner uuid;
  v_session_id uuid := gen_random_uuid();
  v_started_at timestamptz;
  v_ended_at timestamptz;
  v_reason text;
  v_today date;
  v_day date;
  v_day_sessions integer;
  v_day_minutes integer;
  v_minutes integer := 0;
  v_xp integer := 0;
  v_experience integer;
  v_level integer;
  v_streak integer;
  v_streak_extended boolean := false;
  v_ego text;
  v_usage jsonb;
  v_balance integer;
  v_rewards jsonb := '[]';
  v_unlocked jsonb := '[]';
  v_rule text[];
  v_before bigint;
  v_after bigint;
  v_ego_before bigint := 0;
  v_ego_after bigint := 0;
  v_reached text[] := '{}';
  v_result jsonb;
begin
  -- The endpoint validates these; checked again because this function guards balances.
  if p_user is null or p_client_session_id is null
     or p_duration_seconds is null or p_duration_seconds not between 0 and 86400
     or p_ego_state is null or p_ego_state !~ '^[A-Za-z0-9_-]{1,64}$'
     or char_length(p_action) > 64
     or p_fingerprint is null or char_length(p_fingerprint) not between 1 and 200
     or p_started_at = 'infinity' or p_started_at = '-infinity' then
    raise exception using errcode = '22023', message = 'complete_session: argument out of range';
  end if;

  -- 1. Lock the user's profile (creating it for users who predate the sign-up trigger).
  --    Every change of a user's tokens or progress takes this lock first, so completions
  --    for one user run one after another and each statement below sees all that was
  --    committed before: concurrent completions lose no update, concurrent repeats of
  --    one id find the first one's row in step 2, and of two overlapping sessions sent
  --    at once the second finds the first in step 4.
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
      -- (Answers stored before this migration lack the fields below: they were rewarded,
      -- and ran up to when they were recorded.)
      return jsonb_build_object(
               'rewarded', v_existing.rewarded,
               'reason', v_existing.unrewarded_reason,
               'started_at', v_existing.ended_at - make_interval(secs => v_existing.duration),
               'ended_at', v_existing.ended_at)
             || v_existing.result
             || jsonb_build_object('outcome', 'replayed', 'replayed', true);
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

  -- 4. When the session ran, and whether it may earn. now() is the statement's start:
  --    the moment the completion arrived, whatever it then waited for the lock.
  if p_started_at is null then
    v_ended_at := now();
    v_started_at := v_ended_at - make_interval(secs => p_duration_seconds);
  else
    v_started_at := p_started_at;
    v_ended_at := p_started_at + make_interval(secs => p_duration_seconds);
    if v_ended_at > now() + overlap_tolerance then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'in_future');
    end if;
    if v_started_at < now() - max_backdate then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'too_old',
                                'max_backdate_seconds', extract(epoch from max_backdate)::integer);
    end if;
    if v_started_at < v_profile.created_at - overlap_tolerance then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'before_account');
    end if;
  end if;

  v_today := public.local_today(v_profile.settings ->> 'timezone');
  -- The counters' day only moves forward (see user_profiles.reward_day).
  if v_profile.reward_day is null or v_today > v_profile.reward_day then
    v_day := v_today;
    v_day_sessions := 0;
    v_day_minutes := 0;
  else
    v_day := v_profile.reward_day;
    v_day_sessions := v_profile.reward_day_sessions;
    v_day_minutes := v_profile.reward_day_xp_minutes;
  end if;

  -- Overlap: each session occupies [ended_at - max(duration, min_session_slot), ended_at].
  -- The first two conditions are the index range; the last is the exact test.
  if exists (
    select 1
      from public.sessions s
     where s.user_id = p_user
       and s.rewarded
       and s.ended_at > least(v_started_at, v_ended_at - min_session_slot) + overlap_tolerance
       and s.ended_at - greatest(make_interval(secs => s.duration), min_session_slot)
             < v_ended_at - overlap_tolerance
       and least(s.ended_at, v_ended_at)
           - greatest(s.ended_at - greatest(make_interval(secs => s.duration), min_session_slot),
                      least(v_started_at, v_ended_at - min_session_slot))
           > overlap_tolerance
  ) then
    v_reason := 'overlaps_previous_session';
  elsif v_day_sessions >= daily_sessions_cap then
    v_reason := 'daily_session_cap';
  elsif v_day_minutes >= daily_minutes_cap then
    v_reason := 'daily_xp_minutes_cap';
  end if;

  v_experience := v_profile.experience;
  v_level := v_profile.level;
  v_streak := v_profile.session_streak;
  v_balance := v_profile.tokens;

  if v_reason is null then
    -- 5. Experience and level. The minutes that earn XP stop at the day's cap. A level
    --    is never lowered (profiles written by the old client may hold a level ahead of
    --    their experience), and only levels above the one held pay tokens, so each level
    --    pays once.
    v_minutes := least(p_duration_seconds / 60, xp_minutes_cap, daily_minutes_cap - v_day_minutes);
    v_xp := xp_base + xp_per_minute * v_minutes;
    v_experience := v_profile.experience + v_xp;
    v_level := greatest(v_profile.level, 1 + v_experience / xp_per_level);
    v_day_sessions := v_day_sessions + 1;
    v_day_minutes := v_day_minutes + v_minutes;

    -- 6. Streak, in the user's local days.
    if v_profile.last_session_date is null or v_today > v_profile.last_session_date then
      v_streak_extended := true;
      v_streak := case when v_today = v_profile.last_session_date + 1
                       then v_profile.session_streak + 1
                       else 1 end;
    end if;
    -- (Otherwise not the first session of the local day, or the user moved their time
    -- zone west and it is still an already-counted day there: the streak stands.)

    -- 7. Tokens: one ledger row per reward, each continuing the balance.
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

    -- 8. Ego-state usage (the app's states only) and the profile.
    v_usage := v_profile.ego_state_usage;
    select name into v_ego from public.ego_states where name = lower(p_ego_state);
    if found then
      if not v_usage ? v_ego then
        -- A state counted for the first time: ego_explorer's metric may cross here.
        select count(*) into v_ego_before
          from jsonb_object_keys(v_usage) as k
          join public.ego_states e on e.name = k;
        v_ego_after := v_ego_before + 1;
      end if;
      v_usage := jsonb_set(v_usage, array[v_ego],
                           to_jsonb(coalesce((v_usage ->> v_ego)::integer, 0) + 1));
    end if;

    update public.user_profiles
       set experience = v_experience,
           level = v_level,
           tokens = v_balance,
           session_streak = v_streak,
           last_session_date = case when v_streak_extended then v_today else last_session_date end,
           ego_state_usage = v_usage,
           sessions_completed = sessions_completed + 1,
           reward_day = v_day,
           reward_day_sessions = v_day_sessions,
           reward_day_xp_minutes = v_day_minutes
     where id = p_user;

    -- 9. Achievements whose metric reaches its threshold with this session. Only those
    --    not reached before it are written: every earlier completion wrote the ones it
    --    reached (20250105000000 backfilled older profiles), so a statement is spent
    --    only on the few sessions that cross a threshold. sessions_completed counts
    --    rewarded sessions; ego_states counts the app's states in ego_state_usage.
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
          v_before := v_ego_before;
          v_after := v_ego_after;
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
  end if;

  -- 10. The session, with the answer a replay will return.
  v_result := jsonb_build_object(
    'outcome', 'created',
    'replayed', false,
    'session_id', v_session_id,
    'client_session_id', p_client_session_id,
    'rewarded', v_reason is null,
    'reason', v_reason,
    'started_at', v_started_at,
    'ended_at', v_ended_at,
    'xp_minutes', v_minutes,
    'experience_gained', v_xp,
    'tokens_awarded', v_balance - v_profile.tokens,
    'rewards', v_rewards,
    'level_before', v_profile.level,
    'level_after', v_level,
    'streak', v_streak,
    'streak_extended', v_streak_extended,
    'local_date', v_today,
    'achievements_unlocked', v_unlocked,
    'daily', jsonb_build_object(
      'date', v_day,
      'rewarded_sessions', v_day_sessions,
      'rewarded_sessions_cap', daily_sessions_cap,
      'xp_minutes', v_day_minutes,
      'xp_minutes_cap', daily_minutes_cap
    ),
    'totals', jsonb_build_object(
      'tokens', v_balance,
      'experience', v_experience,
      'level', v_level,
      'session_streak', v_streak
    )
  );

  insert into public.sessions (id, user_id, client_session_id, ego_state, action, duration, protocol_id,
                               experience_gained, tokens_awarded, request_fingerprint, result, local_date,
                               ended_at, rewarded, unrewarded_reason)
  values (v_session_id, p_user, p_client_session_id, p_ego_state, p_action, p_duration_seconds, p_protocol_id,
          v_xp, v_balance - v_profile.tokens, p_fingerprint, v_result, v_today,
          v_ended_at, v_reason is null, v_reason);

  return v_result;
end
$$;

revoke all on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  from public, anon, authenticated, service_role;
grant execute on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  to service_role;
