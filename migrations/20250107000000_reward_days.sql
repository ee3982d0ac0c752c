-- The economy's days: when a session counts, and in which day, so that late, skewed and
-- out-of-order reports earn what they would have earned on time, and no time zone game
-- opens a fresh day of caps.
--
-- * A session counts on the local day it ended in, whenever it is reported (up to the
--   late window after it ended). A device clock a little ahead is taken as "ended now".
-- * A day, once opened, is a fixed interval of real time (public.reward_days): every
--   later session that ended inside it counts on it, whatever the time zone is by then.
--   A session outside every open day opens its date in the user's time zone at that
--   moment, cut so that it never overlaps the days around it; a date that is not after
--   the day before it (or not before the day after it) is not opened: that day is
--   stretched instead. So day numbers rise with real time, each is opened once, and a
--   date opened is the session's date in some real zone (UTC-12 to UTC+14): whatever
--   the sequence of zone changes, the days are at most the UTC dates they span plus the
--   26 hours between the extreme zones, i.e. one day gained by crossing the date line,
--   once, not once per change.
-- * The streak is computed from the set of days with a rewarded session, not from the
--   order they arrived in: consecutive days whose sessions are at most streak_max_gap
--   apart (the end of the last session of a day to the start of the first of the
--   next). Streak bonuses are due floor(length / 7) per run; the ones due and not yet
--   paid are paid under the references 'streak:<n>' (the user's n-th bonus), so each is
--   paid exactly once and a run joined by a late day pays what it would have on time.
-- * settings.timezone holds only IANA zone names (a trigger, so PostgREST writes are
--   checked too).

------------------------------------------------------------------------------------------
-- Time zone names
------------------------------------------------------------------------------------------

-- An IANA zone name as the server's tz database knows it, spelled as it does
-- ('Europe/Paris', 'UTC', 'Etc/GMT+5'). pg_timezone_names also lists files of the zone
-- directory that are not zones one lives in: 'posixrules', 'Factory', 'localtime' and the
-- 'posix/' and 'right/' copies; those are refused. POSIX strings ('UTC+5', 'UTC24',
-- 'A/B-167'), which AT TIME ZONE would accept and which shift the date by up to a week,
-- are not in the list. Legacy names of the IANA database ('EST5EDT', 'US/Pacific') are.
create function public.is_iana_timezone(p_name text) returns boolean
  language sql
  stable
  set search_path = public, pg_temp
  as $$
  select p_name is not null
     and p_name !~ '^(posix|right)/'
     and p_name not in ('posixrules', 'Factory', 'localtime')
     and exists (select 1 from pg_catalog.pg_timezone_names z where z.name = p_name)
$$;

revoke all on function public.is_iana_timezone(text) from public, anon, authenticated, service_role;
grant execute on function public.is_iana_timezone(text) to authenticated, service_role;

-- Refuses a profile whose settings.timezone is set to anything but an IANA zone name
-- (a JSON null or no key at all means UTC). Checked only when the value changes, since
-- reading the zone list costs a few milliseconds. SQLSTATE 23514 (check_violation):
-- PostgREST answers 400 with the message.
create function public.user_profiles_check_timezone() returns trigger
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_zone jsonb := new.settings -> 'timezone';
begin
  if v_zone is null or jsonb_typeof(v_zone) = 'null' then
    return new;
  end if;
  if tg_op = 'UPDATE' and v_zone is not distinct from old.settings -> 'timezone' then
    return new;
  end if;
  if jsonb_typeof(v_zone) <> 'string' or not public.is_iana_timezone(v_zone #>> '{}') then
    raise exception using
      errcode = '23514',
      message = format('settings.timezone must be an IANA time zone name such as "Europe/Paris", not %s',
                       left(v_zone::text, 80)),
      hint = 'Use a name from the IANA tz database (e.g. the device''s zone identifier); omit it for UTC.';
  end if;
  return new;
end
$$;

revoke all on function public.user_profiles_check_timezone() from public, anon, authenticated, service_role;

-- Existing profiles: a name that is not an IANA zone counted as UTC until now, so it is
-- set to 'UTC', which changes no one's days. (Done before the trigger exists.)
with zones as materialized (
  select z.name
    from pg_catalog.pg_timezone_names z
   where z.name !~ '^(posix|right)/' and z.name not in ('posixrules', 'Factory', 'localtime')
)
update public.user_profiles p
   set settings = jsonb_set(p.settings, '{timezone}', '"UTC"')
 where p.settings ? 'timezone'
   and jsonb_typeof(p.settings -> 'timezone') <> 'null'
   and (jsonb_typeof(p.settings -> 'timezone') <> 'string'
        or not exists (select 1 from zones where zones.name = p.settings ->> 'timezone'));

create trigger user_profiles_check_timezone
  before insert or update of settings on public.user_profiles
  for each row execute function public.user_profiles_check_timezone();

------------------------------------------------------------------------------------------
-- The days
------------------------------------------------------------------------------------------

-- A user's local day as the economy counts it: the real-time interval it covers, fixed
-- when it is opened, and what its rewarded sessions earned. Intervals of one user never
-- overlap and days rise with starts_at (complete_session keeps both, under the profile
-- lock). Written only by complete_session.
create table public.reward_days (
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  day date not null,
  starts_at timestamptz not null,
  ends_at timestamptz not null,
  -- The zone the day was opened in.
  timezone text not null,
  sessions integer not null default 0,
  xp_minutes integer not null default 0,
  -- The first start and the last end of the day's rewarded sessions (the streak's gap).
  first_started_at timestamptz,
  last_ended_at timestamptz,
  primary key (user_id, day),
  check (starts_at < ends_at),
  check (sessions >= 0 and xp_minutes >= 0)
);

create index reward_days_user_id_starts_at_idx on public.reward_days (user_id, starts_at);

alter table public.reward_days enable row level security;
revoke all on table public.reward_days from anon, authenticated, service_role;
grant select on table public.reward_days to authenticated;
grant all on table public.reward_days to service_role;
create policy "own reward days: read" on public.reward_days
  for select to authenticated using (user_id = (select auth.uid()));

-- Existing rewarded sessions: their days (sessions.local_date), each the whole date in
-- the user's zone now (one zone per user, so they cannot overlap).
insert into public.reward_days (user_id, day, starts_at, ends_at, timezone, sessions, xp_minutes,
                                first_started_at, last_ended_at)
select s.user_id, s.local_date,
       s.local_date::timestamp at time zone z.tz,
       (s.local_date + 1)::timestamp at time zone z.tz,
       z.tz,
       count(*),
       coalesce(sum(greatest(s.experience_gained - 10, 0) / 2), 0),
       min(s.ended_at - make_interval(secs => s.duration)),
       max(s.ended_at)
  from public.sessions s
  join public.user_profiles p on p.id = s.user_id
 cross join lateral (select public.effective_timezone(p.settings ->> 'timezone') as tz) z
 where s.rewarded
 group by s.user_id, s.local_date, z.tz;

alter table public.user_profiles
  drop column reward_day,
  drop column reward_day_sessions,
  drop column reward_day_xp_minutes;

-- The user's day that a moment belongs to, opening or stretching one if none holds it
-- yet (see the top of this file). p_zone: the user's zone now, an IANA name. The caller
-- holds the user's profile lock, so days are opened one at a time per user.
-- * A day whose interval holds p_at: that day.
-- * Else p_at's date in p_zone, if it lies strictly between the open days around p_at:
--   opened as that date in p_zone, cut to end where the next day starts and to start
--   where the one before ends.
-- * Else (the date is not after the day before: the zone moved west) the day before goes
--   on until its date's end in p_zone; or (not before the day after: a late session,
--   the zone moved east) the day after begins at its date's start in p_zone.
-- A date's interval is its local midnight to the next in p_zone, so a day with a
-- daylight-saving change has 23 or 25 hours.
create function public.reward_day_for(p_user uuid, p_at timestamptz, p_zone text)
  returns public.reward_days
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_day public.reward_days;
  v_prev public.reward_days;
  v_next public.reward_days;
  v_date date := (p_at at time zone p_zone)::date;
begin
  select * into v_day
    from public.reward_days
   where user_id = p_user and starts_at <= p_at
   order by starts_at desc
   limit 1;
  if found and v_day.ends_at > p_at then
    return v_day;
  end if;
  v_prev := v_day;  -- the latest day before p_at (all fields null if none)
  select * into v_next
    from public.reward_days
   where user_id = p_user and starts_at > p_at
   order by starts_at
   limit 1;

  if v_prev.day is not null and v_date <= v_prev.day then
    update public.reward_days
       set ends_at = least((v_prev.day + 1)::timestamp at time zone p_zone, coalesce(v_next.starts_at, 'infinity'))
     where user_id = p_user and day = v_prev.day
    returning * into v_day;
  elsif v_next.day is not null and v_date >= v_next.day then
    update public.reward_days
       set starts_at = greatest(v_next.day::timestamp at time zone p_zone, coalesce(v_prev.ends_at, '-infinity'))
     where user_id = p_user and day = v_next.day
    returning * into v_day;
  else
    insert into public.reward_days (user_id, day, starts_at, ends_at, timezone)
    values (p_user, v_date,
            greatest(v_date::timestamp at time zone p_zone, coalesce(v_prev.ends_at, '-infinity')),
            least((v_date + 1)::timestamp at time zone p_zone, coalesce(v_next.starts_at, 'infinity')),
            p_zone)
    returning * into v_day;
  end if;
  return v_day;
end
$$;

revoke all on function public.reward_day_for(uuid, timestamptz, text) from public, anon, authenticated, service_role;

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
-- e.g. after being offline); null means it ended now.
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
--       than late_window ago, or p_started_at is before the user's profile was created
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
  -- (20250105000000_achievement_rules.sql) and in the ego_states rows; the code
  -- below only applies them.
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
  streak_max_gap      constant interval := interval '48 hours';
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
    if v_started_at < v_profile.created_at - overlap_tolerance then
      return jsonb_build_object('outcome', 'invalid_started_at', 'problem', 'before_account');
    end if;
  end if;

  -- 5. The day it counts on (see reward_day_for).
  v_day := public.reward_day_for(p_user, v_ended_at,
                                 public.effective_timezone(v_profile.settings ->> 'timezone'));

  -- 6. Whether it may earn. Overlap: each session occupies
  --    [ended_at - max(duration, min_session_slot), ended_at]. The first two conditions
  --    are the index range; the last is the exact test.
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
    v_minutes := least(p_duration_seconds / 60, xp_minutes_cap, daily_minutes_cap - v_day.xp_minutes);
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
                               ended_at, rewarded, unrewarded_reason)
  values (v_session_id, p_user, p_client_session_id, p_ego_state, p_action, p_duration_seconds, p_protocol_id,
          v_xp, v_balance - v_profile.tokens, p_fingerprint, v_result, v_day.day,
          v_ended_at, v_reason is null, v_reason);

  return v_result;
end
$$;

revoke all on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  from public, anon, authenticated, service_role;
grant execute on function public.complete_session(uuid, uuid, text, text, integer, uuid, text, timestamptz)
  to service_role;
