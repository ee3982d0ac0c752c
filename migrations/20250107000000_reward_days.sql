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

