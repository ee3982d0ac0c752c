-- Free use metered by what it costs the operator: an amount (seconds of audio, for
-- transcribe) per user, meter and clock hour, next to the call counts of ai_usage.
--
-- A call takes its measured amount before any upstream call (ai_meter_take), allowed
-- only while the hour's total stays within the plan's limit; afterwards the caller
-- settles it to what the upstream reports it billed (ai_meter_settle), which may take
-- the total past the limit (the next call is then refused) or give some back. Windows
-- are fixed clock hours, like ai_quota_take's, so the reset time is exact.
create table public.ai_meter_usage (
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  meter text not null check (char_length(meter) between 1 and 64),
  window_start timestamptz not null,
  used bigint not null default 0 check (used >= 0),
  primary key (user_id, meter, window_start)
);

alter table public.ai_meter_usage enable row level security;
revoke all on table public.ai_meter_usage from anon, authenticated, service_role;
grant select on table public.ai_meter_usage to authenticated;
grant all on table public.ai_meter_usage to service_role;
create policy "own ai meter usage: read" on public.ai_meter_usage
  for select to authenticated using (user_id = (select auth.uid()));

-- ai_meter_take(user, meter, amount, free_limit, mystic_limit) returns
--   {"allowed": true,  "plan", "meter", "limit", "used", "remaining", "reset_after", "window_start"}
--   {"allowed": false, "plan", "meter", "limit", "used", "remaining", "reset_after", "window_start"}
--   {"allowed": false, "reason": "unknown_user"}
-- "used" includes this call when allowed; a refused amount is not counted. "reset_after"
-- is the whole seconds (at least 1) to the end of the hour: the Retry-After of a refusal.
create function public.ai_meter_take(
  p_user uuid,
  p_meter text,
  p_amount bigint,
  p_free_limit bigint,
  p_mystic_limit bigint
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_window timestamptz := date_trunc('hour', now());
  v_reset_after integer;
  v_plan text;
  v_limit bigint;
  v_used bigint;
begin
  if p_meter is null or char_length(p_meter) not between 1 and 64 or p_amount is null or p_amount < 0
     or p_free_limit is null or p_free_limit < 0 or p_mystic_limit is null or p_mystic_limit < 0 then
    raise exception 'ai_meter_take: invalid arguments' using errcode = '22023';
  end if;

  select plan into v_plan from public.user_profiles where id = p_user;
  if not found then
    if not public.ensure_user_profile(p_user) then
      return jsonb_build_object('allowed', false, 'reason', 'unknown_user');
    end if;
    select plan into v_plan from public.user_profiles where id = p_user;
  end if;
  v_limit := case when v_plan = 'mystic' then p_mystic_limit else p_free_limit end;
  v_reset_after := greatest(1, ceil(extract(epoch from (v_window + interval '1 hour' - now())))::integer);

  -- The conditional upsert takes the row lock: concurrent calls add up exactly.
  if p_amount <= v_limit then
    insert into public.ai_meter_usage as u (user_id, meter, window_start, used)
    values (p_user, p_meter, v_window, p_amount)
    on conflict (user_id, meter, window_start)
      do update set used = u.used + p_amount where u.used + p_amount <= v_limit
    returning u.used into v_used;
  end if;

  if v_used is null then
    select coalesce(max(used), 0) into v_used
      from public.ai_meter_usage
     where user_id = p_user and meter = p_meter and window_start = v_window;
    return jsonb_build_object('allowed', false, 'plan', v_plan, 'meter', p_meter, 'limit', v_limit,
                              'used', v_used, 'remaining', greatest(0, v_limit - v_used),
                              'reset_after', v_reset_after, 'window_start', v_window);
  end if;

  delete from public.ai_meter_usage
   where user_id = p_user and window_start < v_window - interval '1 day';

  return jsonb_build_object('allowed', true, 'plan', v_plan, 'meter', p_meter, 'limit', v_limit,
                            'used', v_used, 'remaining', greatest(0, v_limit - v_used),
                            'reset_after', v_reset_after, 'window_start', v_window);
end
$$;

revoke all on function public.ai_meter_take(uuid, text, bigint, bigint, bigint) from public, anon, authenticated, service_role;
grant execute on function public.ai_meter_take(uuid, text, bigint, bigint, bigint) to service_role;

-- ai_meter_settle(user, meter, window_start, delta): adds delta (negative gives back,
-- never below 0) to the window a take counted in. Returns {"ok": true, "used"} or
-- {"ok": false, "reason": "no_window"} when that window is gone.
create function public.ai_meter_settle(
  p_user uuid,
  p_meter text,
  p_window_start timestamptz,
  p_delta bigint
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_used bigint;
begin
  if p_delta is null then
    raise exception 'ai_meter_settle: invalid arguments' using errcode = '22023';
  end if;
  update public.ai_meter_usage set used = greatest(0, used + p_delta)
   where user_id = p_user and meter = p_meter and window_start = p_window_start
  returning used into v_used;
  if v_used is null then
    return jsonb_build_object('ok', false, 'reason', 'no_window');
  end if;
  return jsonb_build_object('ok', true, 'used', v_used);
end
$$;

revoke all on function public.ai_meter_settle(uuid, text, timestamptz, bigint) from public, anon, authenticated, service_role;
grant execute on function public.ai_meter_settle(uuid, text, timestamptz, bigint) to service_role;

-- Operator-wide budgets per calendar month (UTC), in the budget's own unit: what the
-- free path may spend of a provider the operator pays for separately (the ElevenLabs
-- stand-in for `tts`, in characters). Nobody's own allowance: one row per budget and month.
create table public.operator_budget_usage (
  budget text not null check (char_length(budget) between 1 and 64),
  period_start date not null,
  used bigint not null default 0 check (used >= 0),
  primary key (budget, period_start)
);
alter table public.operator_budget_usage enable row level security;
revoke all on table public.operator_budget_usage from anon, authenticated, service_role;
grant all on table public.operator_budget_usage to service_role;

-- operator_budget_take(budget, amount, limit) returns
--   {"allowed": true|false, "used", "limit", "period_start", "reset_after"}
-- counting amount only when it fits; reset_after is the seconds to the next month (UTC).
create function public.operator_budget_take(p_budget text, p_amount bigint, p_limit bigint) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_period date := date_trunc('month', now() at time zone 'utc')::date;
  v_reset_after integer;
  v_used bigint;
begin
  if p_budget is null or char_length(p_budget) not between 1 and 64 or p_amount is null or p_amount < 0
     or p_limit is null or p_limit < 0 then
    raise exception 'operator_budget_take: invalid arguments' using errcode = '22023';
  end if;
  v_reset_after := greatest(1, ceil(extract(epoch from
    (((v_period + interval '1 month')::timestamp at time zone 'utc') - now())))::integer);
  if p_amount <= p_limit then
    insert into public.operator_budget_usage as u (budget, period_start, used)
    values (p_budget, v_period, p_amount)
    on conflict (budget, period_start) do update set used = u.used + p_amount where u.used + p_amount <= p_limit
    returning u.used into v_used;
  end if;
  if v_used is null then
    select coalesce(max(used), 0) into v_used from public.operator_budget_usage
     where budget = p_budget and period_start = v_period;
    return jsonb_build_object('allowed', false, 'used', v_used, 'limit', p_limit,
                              'period_start', v_period, 'reset_after', v_reset_after);
  end if;
  return jsonb_build_object('allowed', true, 'used', v_used, 'limit', p_limit,
                            'period_start', v_period, 'reset_after', v_reset_after);
end
$$;

-- Gives back what a take counted when the call it paid for failed. Returns {"used"}
-- ({"used": null} when that month's row is gone).
create function public.operator_budget_give_back(p_budget text, p_period_start date, p_amount bigint) returns jsonb
  language sql
  security definer
  set search_path = public, pg_temp
  as $$
  with given as (
    update public.operator_budget_usage set used = greatest(0, used - greatest(0, p_amount))
     where budget = p_budget and period_start = p_period_start
    returning used
  )
  select jsonb_build_object('used', (select used from given))
$$;

revoke all on function public.operator_budget_take(text, bigint, bigint) from public, anon, authenticated, service_role;
revoke all on function public.operator_budget_give_back(text, date, bigint) from public, anon, authenticated, service_role;
grant execute on function public.operator_budget_take(text, bigint, bigint) to service_role;
grant execute on function public.operator_budget_give_back(text, date, bigint) to service_role;
