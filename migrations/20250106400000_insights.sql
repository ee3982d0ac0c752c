-- Insights: a user's progress, and how it compares with other users'.
--
-- The figures are defined once, as views over the user's own rows:
--   insights_totals        sessions, minutes, XP, level progress, current/longest streak, balance
--   insights_days          the last 30 local days (settings.timezone): sessions and minutes per day
--   insights_ego_states    the same 30 days by ego state
--   insights_tokens        tokens earned and spent, by source
--   insights_achievements  every achievement rule: unlocked when, and the metric's current value
-- They are security_invoker views, so a supabase-js client reading them as
-- `authenticated` gets its own rows only (the row-level security of sessions,
-- user_profiles, token_ledger and user_achievements applies). user_insights() reads the
-- same views for one user and answers the insights endpoint in one statement.
--
-- What counts: rewarded sessions (the ones that earned), like the achievements.
-- Sessions recorded without a reward are only counted, as unrewarded_sessions. Minutes
-- are the sessions' durations, not the XP minutes.
--
-- Comparison. A user's percentile for their 30-day minutes and current streak, among
-- active users (a rewarded session in the last 30 days), comes from a histogram, never
-- from a scan of other users in the request: insights_refresh() rebuilds the histogram
-- from the last 30 days of sessions (one pass) and is meant to run on a schedule
-- (pg_cron on Supabase, or `libero analytics --refresh` from cron). The answer says when
-- the histogram was computed (`as_of`, `age_seconds`). Rebuilding rather than updating it
-- on each completion keeps session-complete's hot path untouched, and a 30-day window
-- moves every day for everyone anyway: an incrementally kept histogram would be wrong by
-- the next midnight unless something rolled it on a schedule too.

------------------------------------------------------------------------------------------
-- Helpers (callable by clients: the views use them)
------------------------------------------------------------------------------------------

-- The zone if Postgres knows it, else 'UTC': the rule local_today() applies to
-- settings.timezone.
create function public.effective_timezone(p_timezone text) returns text
  language plpgsql
  stable
  set search_path = public, pg_temp
  as $$
begin
  if p_timezone ~ '^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_+-]+)*$' then
    begin
      perform now() at time zone p_timezone;
      return p_timezone;
    exception when invalid_parameter_value then
      -- 'time zone "..." not recognized': UTC, as local_today() does.
    end;
  end if;
  return 'UTC';
end
$$;

-- The streak as it stands today: the profile keeps the streak of the last counted day,
-- which is broken once a whole local day has passed without a rewarded session.
create function public.current_streak(p_streak integer, p_last_session_date date, p_timezone text)
  returns integer
  language sql
  stable
  as $$
  select case
           when p_last_session_date >= (now() at time zone public.effective_timezone(p_timezone))::date - 1
           then coalesce(p_streak, 0)
           else 0
         end
$$;

-- The achievement rules are constants; the achievements view shows them to their users.
grant execute on function public.achievement_rules() to authenticated, service_role;

------------------------------------------------------------------------------------------
-- The per-user figures
------------------------------------------------------------------------------------------

-- Level progress: level = 1 + floor(experience / 100) (xp_per_level in complete_session,
-- 20250106000000_session_integrity.sql), so level L is reached at (L - 1) * 100 XP and the
-- next at L * 100. A level held ahead of its experience (profiles the old client wrote)
-- shows no progress until the experience catches up.
create view public.insights_totals
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
  public.current_streak(p.session_streak, p.last_session_date, p.settings ->> 'timezone') as current_streak,
  -- The longest run of consecutive local days with a rewarded session (sessions.local_date,
  -- the days the streak counts), or the profile's streak if it says more (older profiles).
  greatest(coalesce(runs.longest, 0), p.session_streak) as longest_streak,
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
  select max(run.days) as longest
    from (
      select count(*) as days
        from (
          select d.day, d.day - (row_number() over (order by d.day))::integer as island
            from (select distinct x.local_date as day
                    from public.sessions x
                   where x.user_id = p.id and x.rewarded) d
        ) numbered
       group by numbered.island
    ) run
) runs on true;

-- The last 30 local days, today included, one row each (zeros too). A session belongs to
-- the local day it ended on, in the user's current time zone.
create view public.insights_days
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
 and x.ended_at >= d.day::timestamp at time zone z.tz
 and x.ended_at < (d.day + 1)::timestamp at time zone z.tz
group by p.id, d.day;

-- The same 30 days by ego state: the app's states (ego_states) by name, anything else as
-- 'other'.
create view public.insights_ego_states
  with (security_invoker = true)
  as
select
  p.id as user_id,
  coalesce(e.name, 'other') as ego_state,
  count(*) as sessions,
  round(sum(x.duration) / 60.0, 1) as minutes
from public.user_profiles p
-- (OFFSET 0: computed once per user, not once per row it is used in.)
cross join lateral (select public.effective_timezone(p.settings ->> 'timezone') as tz offset 0) z
join public.sessions x
  on x.user_id = p.id
 and x.rewarded
 and x.ended_at >= ((now() at time zone z.tz)::date - 29)::timestamp at time zone z.tz
left join public.ego_states e on e.name = lower(x.ego_state)
group by p.id, coalesce(e.name, 'other');

-- Tokens by source: what came in (direction 'earned': session_complete, level_up,
-- streak_bonus, purchase, spend_refund, dispute_won) and what went out ('spent': the
-- priced feature of a spend, or 'stripe_refund' for a purchase taken back). Earned minus
-- spent is the balance (the ledger's invariant).
create view public.insights_tokens
  with (security_invoker = true)
  as
select
  l.user_id,
  case when l.delta > 0 then 'earned' else 'spent' end as direction,
  case
    when l.reason = 'spend' then l.feature
    when l.reason = 'refund' then 'stripe_refund'
    else l.reason
  end as source,
  sum(abs(l.delta))::bigint as tokens,
  count(*) as entries
from public.token_ledger l
group by 1, 2, 3;

-- Every achievement rule for every user: unlocked_at (null while locked) and the value
-- of its metric now. The metrics are complete_session's (sessions_completed, level, the
-- app's ego states used), except that the streak is the current one: a broken streak
-- starts again from zero towards streak_30.
create view public.insights_achievements
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
     when 'streak' then public.current_streak(p.session_streak, p.last_session_date, p.settings ->> 'timezone')
     when 'level' then p.level
     when 'ego_states' then (select count(*) from jsonb_object_keys(p.ego_state_usage) k
                              join public.ego_states e on e.name = k)
   end)::integer as current
from public.user_profiles p
cross join (select public.achievement_rules() as rules) r
cross join lateral generate_subscripts(r.rules, 1) as i
left join public.user_achievements ua
  on ua.user_id = p.id and ua.achievement_id = r.rules[i][1];

------------------------------------------------------------------------------------------
-- The comparison histogram
------------------------------------------------------------------------------------------

-- Active users (a rewarded session in the last 30 days) per metric value, bucketed
-- (insights_bucket). Rebuilt whole by insights_refresh(); server-only.
create table public.insights_histograms (
  metric text not null check (metric in ('minutes_30d', 'current_streak')),
  bucket bigint not null check (bucket >= 0),
  users integer not null check (users > 0),
  primary key (metric, bucket)
);

-- When the histogram was last rebuilt, over how many active users, and how long it took.
create table public.insights_histogram_state (
  id boolean primary key default true check (id),
  refreshed_at timestamptz,
  population integer not null default 0 check (population >= 0),
  took_ms integer
);
insert into public.insights_histogram_state (id) values (true);

-- The bucket (its lower bound) a value falls in: exact below 100, then two significant
-- digits (1234 -> 1200), so a percentile is within about 1 % and the histogram has a few
-- hundred rows at most, however many users there are. Streaks are exact.
create function public.insights_bucket(p_metric text, p_value bigint) returns bigint
  language sql
  immutable
  as $$
  select case
           when p_value is null or p_value <= 0 then 0
           when p_metric = 'current_streak' or p_value < 100 then p_value
           else p_value - p_value % (10 ^ (floor(log(p_value::numeric)) - 1))::bigint
         end
$$;

-- The percentile of p_value among the histogram's users: the share (0-100) with a lower
-- value, counting those in the same bucket as half below. Null when the histogram is empty.
create function public.insights_percentile(p_metric text, p_value bigint) returns numeric
  language sql
  stable
  as $$
  select round(100.0 * (coalesce(sum(h.users) filter (where h.bucket < b.bucket), 0)
                        + 0.5 * coalesce(sum(h.users) filter (where h.bucket = b.bucket), 0))
               / nullif(sum(h.users), 0), 1)
    from public.insights_histograms h,
         (select public.insights_bucket(p_metric, p_value) as bucket) b
   where h.metric = p_metric
$$;


------------------------------------------------------------------------------------------
-- The insights endpoint's one statement
------------------------------------------------------------------------------------------

-- Everything the insights endpoint answers, for one user, from the views above.
-- p_min_population: below this many active users the comparison is withheld (too few to
-- be anonymous). Returns one of
--   {"outcome":"ok", "generated_at", "timezone",
--    "totals":{"sessions", "unrewarded_sessions", "minutes", "experience", "level",
--              "next_level_experience", "experience_to_next_level", "level_progress",
--              "current_streak", "longest_streak",
--              "tokens":{"balance", "earned_total", "spent_total",
--                        "earned":{source: n}, "spent":{source: n}}},
--    "activity":{"from", "to", "sessions", "minutes",
--                "days":[{"date", "sessions", "minutes"} x 30],
--                "ego_states":[{"ego_state", "sessions", "minutes", "share"}]},
--    "achievements":{"unlocked":[{"id", "unlocked_at"}],
--                    "next":[{"metric", "id", "threshold", "current", "remaining", "progress"}]},
--    "comparison":{"available":true, "as_of", "age_seconds", "population", "min_population",
--                  "minutes_30d":{"value", "percentile"}, "current_streak":{"value", "percentile"}}
--              | {"available":false, "reason":"not_computed"|"population_too_small",
--                 "as_of", "age_seconds", "min_population"}}
--   {"outcome":"unknown_user"}   p_user is not an auth user
-- A user without sessions gets zeros everywhere (and 30 empty days), never an error.
create function public.user_insights(p_user uuid, p_min_population integer) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_totals public.insights_totals;
  v_state public.insights_histogram_state;
  v_tokens jsonb;
  v_activity jsonb;
  v_achievements jsonb;
  v_comparison jsonb;
  v_minutes_30d bigint;
begin
  if p_user is null or p_min_population is null or p_min_population < 0 then
    raise exception using errcode = '22023', message = 'user_insights: invalid arguments';
  end if;

  select * into v_totals from public.insights_totals where user_id = p_user;
  if not found then
    -- Users who predate the sign-up trigger get their profile now, as elsewhere.
    if not public.ensure_user_profile(p_user) then
      return jsonb_build_object('outcome', 'unknown_user');
    end if;
    select * into v_totals from public.insights_totals where user_id = p_user;
  end if;

  select jsonb_build_object(
           'balance', v_totals.tokens,
           'earned_total', coalesce(sum(t.tokens) filter (where t.direction = 'earned'), 0),
           'spent_total', coalesce(sum(t.tokens) filter (where t.direction = 'spent'), 0),
           'earned', coalesce(jsonb_object_agg(t.source, t.tokens) filter (where t.direction = 'earned'), '{}'),
           'spent', coalesce(jsonb_object_agg(t.source, t.tokens) filter (where t.direction = 'spent'), '{}'))
    into v_tokens
    from public.insights_tokens t
   where t.user_id = p_user;

  with days as (
    select d.day, d.sessions, d.minutes from public.insights_days d where d.user_id = p_user
  ), egos as (
    select e.ego_state, e.sessions, e.minutes, round(e.sessions::numeric / sum(e.sessions) over (), 3) as share
      from public.insights_ego_states e where e.user_id = p_user
  )
  select jsonb_build_object(
           'from', (select min(day) from days),
           'to', (select max(day) from days),
           'sessions', (select coalesce(sum(sessions), 0) from days),
           'minutes', (select coalesce(sum(minutes), 0) from days),
           'days', (select jsonb_agg(jsonb_build_object('date', day, 'sessions', sessions, 'minutes', minutes)
                                     order by day) from days),
           'ego_states', coalesce((
             select jsonb_agg(jsonb_build_object(
                      'ego_state', ego_state, 'sessions', sessions, 'minutes', minutes,
                      'share', share)
                    order by sessions desc, ego_state)
               from egos), '[]'))
    into v_activity;

  with rules as (
    select a.* from public.insights_achievements a where a.user_id = p_user
  ), next as (
    -- Per metric, the locked achievement with the lowest threshold.
    select distinct on (metric) * from rules where unlocked_at is null order by metric, threshold
  )
  select jsonb_build_object(
           'unlocked', coalesce((select jsonb_agg(jsonb_build_object('id', achievement_id, 'unlocked_at', unlocked_at)
                                                  order by unlocked_at, achievement_id)
                                   from rules where unlocked_at is not null), '[]'),
           'next', coalesce((select jsonb_agg(jsonb_build_object(
                                      'metric', metric, 'id', achievement_id, 'threshold', threshold,
                                      'current', current, 'remaining', greatest(threshold - current, 0),
                                      'progress', round(least(current::numeric / threshold, 1), 2))
                                    order by metric)
                               from next), '[]'))
    into v_achievements;

  select * into v_state from public.insights_histogram_state;
  if v_state.refreshed_at is null or v_state.population < greatest(p_min_population, 1) then
    v_comparison := jsonb_build_object(
      'available', false,
      'reason', case when v_state.refreshed_at is null then 'not_computed' else 'population_too_small' end,
      'as_of', v_state.refreshed_at,
      'age_seconds', floor(extract(epoch from now() - v_state.refreshed_at))::bigint,
      'min_population', p_min_population);
  else
    -- The user's own value is read now; the others' are as of the histogram.
    select (coalesce(sum(s.duration), 0) / 60)::bigint into v_minutes_30d
      from public.sessions s
     where s.user_id = p_user and s.rewarded and s.ended_at > now() - interval '30 days';
    v_comparison := jsonb_build_object(
      'available', true,
      'as_of', v_state.refreshed_at,
      'age_seconds', floor(extract(epoch from now() - v_state.refreshed_at))::bigint,
      'population', v_state.population,
      'min_population', p_min_population,
      'minutes_30d', jsonb_build_object(
        'value', v_minutes_30d,
        'percentile', coalesce(public.insights_percentile('minutes_30d', v_minutes_30d), 0)),
      'current_streak', jsonb_build_object(
        'value', v_totals.current_streak,
        'percentile', coalesce(public.insights_percentile('current_streak', v_totals.current_streak), 0)));
  end if;

  return jsonb_build_object(
    'outcome', 'ok',
    'generated_at', now(),
    'timezone', v_totals.timezone,
    'totals', jsonb_build_object(
      'sessions', v_totals.sessions,
      'unrewarded_sessions', v_totals.unrewarded_sessions,
      'minutes', v_totals.minutes,
      'experience', v_totals.experience,
      'level', v_totals.level,
      'next_level_experience', v_totals.next_level_experience,
      'experience_to_next_level', v_totals.experience_to_next_level,
      'level_progress', v_totals.level_progress,
      'current_streak', v_totals.current_streak,
      'longest_streak', v_totals.longest_streak,
      'tokens', v_tokens),
    'activity', v_activity,
    'achievements', v_achievements,
    'comparison', v_comparison);
end
$$;

------------------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------------------

alter table public.insights_histograms enable row level security;
alter table public.insights_histogram_state enable row level security;
revoke all on table public.insights_histograms, public.insights_histogram_state
  from anon, authenticated, service_role;
grant select on table public.insights_histograms, public.insights_histogram_state to service_role;

-- The views: a signed-in user reads their own rows (the tables' row-level security);
-- the server reads everyone's.
revoke all on table
  public.insights_totals, public.insights_days, public.insights_ego_states,
  public.insights_tokens, public.insights_achievements
  from anon, authenticated, service_role;
grant select on table
  public.insights_totals, public.insights_days, public.insights_ego_states,
  public.insights_tokens, public.insights_achievements
  to authenticated, service_role;

revoke all on function public.effective_timezone(text) from public, anon, authenticated, service_role;
revoke all on function public.current_streak(integer, date, text) from public, anon, authenticated, service_role;
grant execute on function public.effective_timezone(text) to authenticated, service_role;
grant execute on function public.current_streak(integer, date, text) to authenticated, service_role;

revoke all on function public.insights_bucket(text, bigint) from public, anon, authenticated, service_role;
revoke all on function public.insights_percentile(text, bigint) from public, anon, authenticated, service_role;
revoke all on function public.user_insights(uuid, integer) from public, anon, authenticated, service_role;
grant execute on function public.user_insights(uuid, integer) to service_role;
