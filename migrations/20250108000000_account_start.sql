-- No session is credited for time before its account existed, and the streak that
-- insights shows is the one the rewards count.
--
-- * A session counts as running over [ended_at - credited_seconds, ended_at]: its
--   duration, less any part of it before the account was created (the earlier of the
--   auth user's and the profile's creation). That interval is what it earns XP for and
--   what it occupies against the user's other sessions, so the overlap check reads the
--   same stored interval whichever of two sessions came first. A session that ended
--   before the account existed is refused.
-- * reward_streak(user): the run of days with a rewarded session that ends on the
--   user's latest such day (public.reward_days), while it can still be extended: the
--   day a session ending now would count on (the open day holding now, else now's date
--   in the user's zone) is at most the day after it, and the last session of that day
--   ended at most streak_max_gap (48 h) ago. longest_streak counts runs the same way.

------------------------------------------------------------------------------------------
-- The stored interval
------------------------------------------------------------------------------------------

-- Null on rows written before this column existed (and by importers): the whole
-- duration, as was credited then.
alter table public.sessions add column credited_seconds public.session_seconds;

-- A streak's consecutive days must also be close in real time: at most this long from
-- the end of a day's last session to the start of the next day's first, so no stretched
-- day (see reward_days) keeps a streak alive longer. A reward rule of complete_session,
-- here so that insights counts streaks by the same rule.
create function public.streak_max_gap() returns interval
  language sql
  immutable
  as $$ select interval '48 hours' $$;

revoke all on function public.streak_max_gap() from public, anon, authenticated, service_role;
grant execute on function public.streak_max_gap() to authenticated, service_role;

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
-- p_started_at: when the session started, if the app says so (a completion sent late,
-- e.g. after being offline); null means it ended now. Either way the session is credited
-- only for its time after the account was created (the earlier of the auth user's and
-- the profile's creation): it counts as starting then at the earliest, for its XP
-- minutes, the overlap check and the streak's gap.
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
--       local_date (= daily.date) is the day the session counts on: the day it ended.
--       ended_at is now when the device's clock was ahead by at most clock_tolerance.
--       started_at is when it counts as having started: ended_at - duration, or the
--       account's creation if that is later (xp_minutes are whole minutes of
--       ended_at - started_at).
--       streak is the user's streak after it (the run of days that ends on their latest
--       day with a rewarded session); streak_extended is true when this session was the
--       first rewarded one of its day. An unrewarded session ("rewarded":false) is
--       recorded with zero XP and tokens, no rewards, no achievements, and changes
--       nothing on the profile.
--   the same document with "outcome":"replayed", "replayed":true: this id was completed
--       before with the same fingerprint; nothing is granted again, and the values are
--       those of the first completion
--   {"outcome":"conflict", "session_id"}  this id was completed with another fingerprint
--   {"outcome":"unknown_protocol"}        p_protocol_id is no protocol
--   {"outcome":"forbidden_protocol"}      p_protocol_id is another user's protocol
--   {"outcome":"invalid_started_at", "problem":"in_future"|"too_old"|"before_account",
--    "clock_tolerance_seconds" (in_future), "late_window_seconds" (too_old)}
--       the session would end more than clock_tolerance after now, or it ended more
--       than late_window ago, or it ended before the user's account was created
--   {"outcome":"unknown_user"}            p_user is not an auth user
-- In the last five cases no session, reward or achievement is written.
create or replace function public.complete_session(
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
  -- (20250105000000_achievement_rules.sql), in streak_max_gap() (which insights reads
  -- too) and in the ego_states rows; the code below only applies them.
  ----------------------------------------------------------------------------------------
  xp_base             constant integer := 10;  -- XP for every rewarded session,
  xp_per_minute       constant integer := 2;   -- plus this much per whole minute,
  xp_minutes_cap      constant integer := 60;  -- counting at most this many minutes.
  xp_per_level        constant integer := 100; -- level = 1 + floor(experience / this)
  tokens_per_level    constant integer := 5;   -- for each level reached (once per level)
  tokens_per_session  constant integer := 2;   -- for every rewarded session
  streak_bonus_every  constant integer := 7;   -- for every 7 consecutive days of a
  streak_bonus_tokens constant integer := 10;  -- streak: this many tokens
  -- A streak's consecutive days must also be close in real time: at most this long
  -- from the end of a day's last session to the start of the next day's first, so no
  -- stretched day (see reward_days) keeps a streak alive longer.
  streak_max_gap      constant interval := public.streak_max_gap();
  -- Time must add up. Rewarded sessions may overlap by at most this much (clock and
  -- network slack: a completion arrives a little after the session ended).
  overlap_tolerance   constant interval := interval '30 seconds';
  -- A session shorter than this takes this much wall-clock time for the overlap check,
  -- so bursts of zero-length "sessions" cannot all pass. More than the tolerance, or two
  -- of them at the same moment would not overlap by more than it.
  min_session_slot    constant interval := interval '60 seconds';
  -- How long after it ended a session may still be reported (an app offline for a
  -- long weekend).
  late_window         constant interval := interval '72 hours';
  -- A device clock up to this far ahead: a session "ending" that far in the future is
  -- taken as ending now. Further ahead it is refused.
  clock_tolerance     constant interval := interval '5 minutes';
  -- Daily caps, per day (reward_days): a real person does several sessions a day,
  -- rarely more than a few hours of them.
  daily_sessions_cap  constant integer := 12;  -- rewarded sessions
  daily_minutes_cap   constant integer := 240; -- whole minutes that earn XP
  ----------------------------------------------------------------------------------------

  v_profile public.user_profiles;
  v_existing public.sessions;
  v_protocol_owner uuid;
  v_session_id uuid := gen_random_uuid();
  v_started_at timestamptz;
  v_ended_at timestamptz;
  v_account_start timestamptz;
  v_credited integer;
  v_reason text;
  v_day public.reward_days;
  v_minutes integer := 0;
  v_xp integer := 0;
  v_experience integer;
  v_level integer;
  v_streak integer;
  v_last_day date;
  v_longest integer := 0;
  v_bonuses_due integer := 0;
  v_bonuses_paid integer := 0;
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
      -- (Answers stored before rewarded/ended_at existed lack the fields below: they
      -- were rewarded, and ran up to when they were recorded.)
      return jsonb_build_object(
               'rewarded', v_existing.rewarded,
               'reason', v_existing.unrewarded_reason,
               'started_at', v_existing.ended_at
                             - make_interval(secs => coalesce(v_existing.credited_seconds, v_existing.duration)),
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

  -- 4. When the session ran. now() is the statement's start: the moment the completion
  --    arrived, whatever it then waited for the lock.
  if p_started_at is null then
    v_ended_at := now();
    v_started_at := v_ended_at - make_interval(secs => p_duration_seconds);
  else
    v_started_at := p_started_at;
    v_ended_at := p_started_at + make_interval(secs => p_duration_seconds);
    if v_ended_at > now() + clock_tolerance then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'in_future',
                                'clock_tolerance_seconds', extract(epoch from clock_tolerance)::integer);
    end if;
    if v_ended_at > now() then
      -- The device's clock is a little ahead: the session has just ended.
      v_ended_at := now();
      v_started_at := v_ended_at - make_interval(secs => p_duration_seconds);
    end if;
    if v_ended_at < now() - late_window then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'too_old',
                                'late_window_seconds', extract(epoch from late_window)::integer);
    end if;
  end if;
  -- No time before the account existed is credited, with or without p_started_at (a
  -- session without it claims its duration back from now). The profile may be younger
  -- than the account (made at the first completion for users who predate the sign-up
  -- trigger), so the earlier of the two creations counts.
  v_account_start := v_profile.created_at;
  if v_started_at < v_account_start then
    select least(v_account_start, coalesce(u.created_at, v_account_start)) into v_account_start
      from auth.users u where u.id = p_user;
    v_account_start := coalesce(v_account_start, v_profile.created_at);
    if v_ended_at < v_account_start then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'before_account');
    end if;
    v_started_at := greatest(v_started_at, v_account_start);
  end if;
  v_credited := floor(extract(epoch from v_ended_at - v_started_at))::integer;

  -- 5. The day it counts on (see reward_day_for).
  v_day := public.reward_day_for(p_user, v_ended_at,
                                 public.effective_timezone(v_profile.settings ->> 'timezone'));

  -- 6. Whether it may earn. Overlap: each session occupies
  --    [ended_at - max(credited seconds, min_session_slot), ended_at] (rows written
  --    before credited_seconds existed: their duration). The first two conditions are
  --    the index range; the last is the exact test.
  if exists (
    select 1
      from public.sessions s
     where s.user_id = p_user
       and s.rewarded
       and s.ended_at > least(v_started_at, v_ended_at - min_session_slot) + overlap_tolerance
       and s.ended_at - greatest(make_interval(secs => coalesce(s.credited_seconds, s.duration)), min_session_slot)
             < v_ended_at - overlap_tolerance
       and least(s.ended_at, v_ended_at)
           - greatest(s.ended_at - greatest(make_interval(secs => coalesce(s.credited_seconds, s.duration)), min_session_slot),
                      least(v_started_at, v_ended_at - min_session_slot))
           > overlap_tolerance
  ) then
    v_reason := 'overlaps_previous_session';
  elsif v_day.sessions >= daily_sessions_cap then
    v_reason := 'daily_session_cap';
  elsif v_day.xp_minutes >= daily_minutes_cap then
    v_reason := 'daily_xp_minutes_cap';
  end if;

  v_experience := v_profile.experience;
  v_level := v_profile.level;
  v_streak := v_profile.session_streak;
  v_balance := v_profile.tokens;

  if v_reason is null then
    -- 7. Experience and level. The minutes that earn XP stop at the day's cap. A level
    --    is never lowered (profiles written by the old client may hold a level ahead of
    --    their experience), and only levels above the one held pay tokens, so each level
    --    pays once.
    v_minutes := least(v_credited / 60, xp_minutes_cap, daily_minutes_cap - v_day.xp_minutes);
    v_xp := xp_base + xp_per_minute * v_minutes;
    v_experience := v_profile.experience + v_xp;
    v_level := greatest(v_profile.level, 1 + v_experience / xp_per_level);
    v_streak_extended := v_day.sessions = 0;

    update public.reward_days
       set sessions = sessions + 1,
           xp_minutes = xp_minutes + v_minutes,
           first_started_at = least(first_started_at, v_started_at),
           last_ended_at = greatest(last_ended_at, v_ended_at)
     where user_id = p_user and day = v_day.day
    returning * into v_day;

    -- 8. The streak, from the days with a rewarded session: runs of consecutive days
    --    close enough in time. Adding a session only adds days or brings them closer,
    --    so runs only grow or join, and the bonuses due (floor(length / 7) per run)
    --    never fall: paying the difference pays the same whatever the order.
    with days as (
      select d.day,
             case when lag(d.day) over w = d.day - 1
                   and d.first_started_at - lag(d.last_ended_at) over w <= streak_max_gap
                  then 0 else 1 end as starts_run
        from public.reward_days d
       where d.user_id = p_user and d.sessions > 0
      window w as (order by d.day)
    ), numbered as (
      select day, sum(starts_run) over (order by day) as run from days
    ), runs as (
      select count(*)::integer as length, max(day) as last_day from numbered group by run
    )
    select coalesce(sum(length / streak_bonus_every), 0)::integer,
           coalesce(max(length), 0),
           (select r.length from runs r order by r.last_day desc limit 1),
           max(last_day)
      into v_bonuses_due, v_longest, v_streak, v_last_day
      from runs;

    -- 9. Tokens: one ledger row per reward, each continuing the balance.
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

    if v_bonuses_due > 0 then
      -- Bonuses paid so far, whatever their reference (older ones are keyed by the
      -- session that paid them).
      select count(*) into v_bonuses_paid
        from public.token_ledger
       where user_id = p_user and reason = 'streak_bonus';
      for bonus in v_bonuses_paid + 1 .. v_bonuses_due loop
        v_balance := v_balance + streak_bonus_tokens;
        insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
        values (p_user, streak_bonus_tokens, 'streak_bonus', 'streak:' || bonus, v_balance);
        v_rewards := v_rewards || jsonb_build_object('reason', 'streak_bonus', 'tokens', streak_bonus_tokens,
                                                     'streak', v_longest);
      end loop;
    end if;

    -- 10. Ego-state usage (the app's states only) and the profile.
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
           last_session_date = v_last_day,
           ego_state_usage = v_usage,
           sessions_completed = sessions_completed + 1
     where id = p_user;

    -- 11. Achievements whose metric reaches its threshold with this session. Only those
    --    not reached before it are written: every earlier completion wrote the ones it
    --    reached (20250105000000 backfilled older profiles), so a statement is spent
    --    only on the few sessions that cross a threshold. sessions_completed counts
    --    rewarded sessions; ego_states counts the app's states in ego_state_usage; the
    --    streak is the longest run of days, which a late day can lengthen anywhere, so
    --    a streak achievement is written whenever the longest run reaches it (once:
    --    user_achievements is unique per user and achievement).
    foreach v_rule slice 1 in array public.achievement_rules() loop
      case v_rule[2]
        when 'sessions' then
          v_before := v_profile.sessions_completed;
          v_after := v_profile.sessions_completed + 1;
        when 'streak' then
          v_before := 0;
          v_after := v_longest;
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

  -- 12. The session, with the answer a replay will return.
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
    'local_date', v_day.day,
    'achievements_unlocked', v_unlocked,
    'daily', jsonb_build_object(
      'date', v_day.day,
      'rewarded_sessions', v_day.sessions,
      'rewarded_sessions_cap', daily_sessions_cap,
      'xp_minutes', v_day.xp_minutes,
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
                               ended_at, rewarded, unrewarded_reason, credited_seconds)
  values (v_session_id, p_user, p_client_session_id, p_ego_state, p_action, p_duration_seconds, p_protocol_id,
          v_xp, v_balance - v_profile.tokens, p_fingerprint, v_result, v_day.day,
          v_ended_at, v_reason is null, v_reason, v_credited);

  return v_result;
end
$$;

revoke all on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  from public, anon, authenticated, service_role;
grant execute on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  to service_role;

------------------------------------------------------------------------------------------
-- Streaks as the rewards count them, for insights
------------------------------------------------------------------------------------------

-- The user's runs of days with a rewarded session (public.reward_days), as complete_session
-- counts them: consecutive days whose sessions are at most streak_max_gap() apart. One row
-- per run: its length, its last day and when that day's last session ended.
create function public.streak_runs(p_user uuid)
  returns table (length integer, last_day date, last_ended_at timestamptz)
  language sql
  stable
  set search_path = public, pg_temp
  as $$
  with days as (
    select d.day, d.last_ended_at,
           case when lag(d.day) over w = d.day - 1
                 and d.first_started_at - lag(d.last_ended_at) over w <= public.streak_max_gap()
                then 0 else 1 end as starts_run
      from public.reward_days d
     where d.user_id = p_user and d.sessions > 0
    window w as (order by d.day)
  ), numbered as (
    select day, last_ended_at, sum(starts_run) over (order by day) as run from days
  )
  select count(*)::integer, max(day), max(last_ended_at) from numbered group by run
$$;

-- The streak as it stands now: the run that ends on the user's latest day with a rewarded
-- session, while a session ending now could still extend it, else 0. A session ending
-- now counts on the day that holds now if one is open, else on now's date in the user's
-- zone, or on the latest day if that date is not after it (public.reward_day_for); it
-- extends the run if that day is the run's last or the one after, and if it starts at
-- most streak_max_gap() after the run's last session ended.
create function public.reward_streak(p_user uuid) returns integer
  language sql
  stable
  set search_path = public, pg_temp
  as $$
  with latest as (
    select r.length, r.last_day, r.last_ended_at
      from public.streak_runs(p_user) r
     order by r.last_day desc
     limit 1
  ), today as (
    select coalesce(
             (select d.day from public.reward_days d
               where d.user_id = p_user and d.starts_at <= now() and d.ends_at > now()),
             greatest((now() at time zone public.effective_timezone(p.settings ->> 'timezone'))::date,
                      (select max(d.day) from public.reward_days d where d.user_id = p_user))) as day
      from public.user_profiles p
     where p.id = p_user
  )
  select coalesce((select l.length
                     from latest l, today t
                    where t.day <= l.last_day + 1
                      and now() - l.last_ended_at <= public.streak_max_gap()), 0)
$$;

revoke all on function public.streak_runs(uuid) from public, anon, authenticated, service_role;
revoke all on function public.reward_streak(uuid) from public, anon, authenticated, service_role;
grant execute on function public.streak_runs(uuid) to authenticated, service_role;
grant execute on function public.reward_streak(uuid) to authenticated, service_role;

-- insights: the current and the longest streak from the runs above, and the days of the
-- last 30 the ones the sessions counted on (sessions.local_date: a late session on the day
-- it happened), so that insights and the rewards agree whatever order sessions arrived in.
-- (The sessions of a day ended at most two days before its date starts in any zone, so
-- the ended_at bound only narrows the scan.)
create or replace view public.insights_totals
  with (security_invoker = true)
  as
select
  p.id as user_id,
  public.effective_timezone(p.settings ->> 'timezone') as timezone,
  coalesce(s.sessions, 0) as sessions,
  coalesce(s.unrewarded_sessions, 0) as unrewarded_sessions,
  coalesce(s.minutes, 0) as minutes,
  p.experience,
  p.level,
  p.level * 100 as next_level_experience,
  greatest(p.level * 100 - p.experience, 0) as experience_to_next_level,
  round(least(greatest(p.experience - (p.level - 1) * 100, 0), 100) / 100.0, 2) as level_progress,
  public.reward_streak(p.id) as current_streak,
  -- Or the profile's streak if it says more (older profiles).
  greatest(coalesce(runs.longest, 0), p.session_streak::bigint) as longest_streak,
  p.tokens
from public.user_profiles p
left join lateral (
  select count(*) filter (where x.rewarded) as sessions,
         count(*) filter (where not x.rewarded) as unrewarded_sessions,
         coalesce(round(sum(x.duration) filter (where x.rewarded) / 60.0, 1), 0) as minutes
    from public.sessions x
   where x.user_id = p.id
) s on true
left join lateral (
  select max(r.length)::bigint as longest from public.streak_runs(p.id) r
) runs on true;

create or replace view public.insights_days
  with (security_invoker = true)
  as
select
  p.id as user_id,
  d.day,
  count(x.id) as sessions,
  coalesce(round(sum(x.duration) / 60.0, 1), 0) as minutes
from public.user_profiles p
-- (OFFSET 0: computed once per user, not once per row it is used in.)
cross join lateral (select public.effective_timezone(p.settings ->> 'timezone') as tz offset 0) z
cross join lateral (select (now() at time zone z.tz)::date as today offset 0) t
cross join lateral (select (t.today - 29 + g.i) as day from generate_series(0, 29) as g (i)) d
left join public.sessions x
  on x.user_id = p.id
 and x.rewarded
 and x.ended_at >= (d.day - 2)::timestamp at time zone 'UTC'
 and x.local_date = d.day
group by p.id, d.day;

create or replace view public.insights_ego_states
  with (security_invoker = true)
  as
select
  p.id as user_id,
  coalesce(e.name, 'other') as ego_state,
  count(*) as sessions,
  round(sum(x.duration) / 60.0, 1) as minutes
from public.user_profiles p
-- (OFFSET 0: computed once per user, not once per row it is used in.)
cross join lateral (select ((now() at time zone public.effective_timezone(p.settings ->> 'timezone'))::date - 29)
                             as first_day offset 0) w
join public.sessions x
  on x.user_id = p.id
 and x.rewarded
 and x.ended_at >= (w.first_day - 2)::timestamp at time zone 'UTC'
 and x.local_date >= w.first_day
left join public.ego_states e on e.name = lower(x.ego_state)
group by p.id, coalesce(e.name, 'other');

create or replace view public.insights_achievements
  with (security_invoker = true)
  as
select
  p.id as user_id,
  r.rules[i][1] as achievement_id,
  r.rules[i][2] as metric,
  r.rules[i][3]::integer as threshold,
  ua.unlocked_at,
  (case r.rules[i][2]
     when 'sessions' then p.sessions_completed
     when 'streak' then public.reward_streak(p.id)
     when 'level' then p.level
     when 'ego_states' then (select count(*) from jsonb_object_keys(p.ego_state_usage) k
                              join public.ego_states e on e.name = k)
   end)::integer as current
from public.user_profiles p
cross join (select public.achievement_rules() as rules) r
cross join lateral generate_subscripts(r.rules, 1) as i
left join public.user_achievements ua
  on ua.user_id = p.id and ua.achievement_id = r.rules[i][1];

-- user_insights keeps a row of insights_totals; altering the function makes connections
-- that ran it before compile it again.
alter function public.user_insights(uuid, integer) set search_path = public, pg_temp;

-- Rebuilds the comparison histogram from the last 30 days of rewarded sessions: one pass
-- over them, whatever the number of users, with the streak the rewards count. Run it on a
-- schedule, e.g. on Supabase (pg_cron):
--   select cron.schedule('libero-insights', '*/15 * * * *', 'select public.insights_refresh()');
-- or `libero analytics --refresh` from cron. Concurrent calls run one after another;
-- readers see the previous histogram until it commits.
-- Returns {"refreshed_at", "population", "took_ms"}.
create or replace function public.insights_refresh() returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_started timestamptz := clock_timestamp();
  v_population integer;
  v_took integer;
begin
  perform pg_advisory_xact_lock(hashtextextended('public.insights_refresh', 0));
  delete from public.insights_histograms;

  with active as materialized (
    select a.user_id,
           a.minutes,
           public.reward_streak(a.user_id) as streak
      from (select s.user_id, (sum(s.duration) / 60)::bigint as minutes
              from public.sessions s
             where s.rewarded and s.ended_at > now() - interval '30 days'
             group by s.user_id) a
      join public.user_profiles p on p.id = a.user_id
  ), histogram as (
    insert into public.insights_histograms (metric, bucket, users)
    select 'minutes_30d', public.insights_bucket('minutes_30d', minutes), count(*) from active group by 2
    union all
    select 'current_streak', public.insights_bucket('current_streak', streak), count(*) from active group by 2
  )
  select count(*) into v_population from active;

  v_took := (extract(epoch from clock_timestamp() - v_started) * 1000)::integer;
  update public.insights_histogram_state
     set refreshed_at = now(), population = v_population, took_ms = v_took;
  return jsonb_build_object('refreshed_at', now(), 'population', v_population, 'took_ms', v_took);
end
$$;

revoke all on function public.insights_refresh() from public, anon, authenticated, service_role;
grant execute on function public.insights_refresh() to service_role;
