-- Hourly AI quotas: one function that checks and counts a call atomically.
--
-- Windows are fixed clock hours (date_trunc('hour', now())): simple to explain ("30 an
-- hour, resets on the hour"), one row per user, endpoint and hour in public.ai_usage, and
-- the time to the reset is exact. The limits come from the caller (Spin variables
-- ai_quota_free_per_hour / ai_quota_mystic_per_hour), the plan from user_profiles.plan.
--
-- ai_quota_take(user, endpoint, free_limit, mystic_limit) returns
--   {"allowed": true,  "plan", "limit", "used", "remaining", "reset_after"}
--   {"allowed": false, "plan", "limit", "used", "remaining": 0, "reset_after"}
--   {"allowed": false, "reason": "unknown_user"}   p_user is not an auth user
-- where "used" counts this call when allowed, and "reset_after" is the whole seconds
-- (at least 1) until the window ends: the Retry-After of a refusal. A refused call is
-- not counted, so hammering a full quota does not push the reset further away.
-- Only the server (service_role) may call it.
create function public.ai_quota_take(
  p_user uuid,
  p_endpoint text,
  p_free_limit integer,
  p_mystic_limit integer
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_window timestamptz := date_trunc('hour', now());
  v_reset_after integer;
  v_plan text;
  v_limit integer;
  v_used integer;
begin
  if p_endpoint is null or char_length(p_endpoint) not between 1 and 64
     or p_free_limit is null or p_free_limit < 0 or p_mystic_limit is null or p_mystic_limit < 0 then
    raise exception 'ai_quota_take: invalid arguments' using errcode = '22023';
  end if;

  select plan into v_plan from public.user_profiles where id = p_user;
  if not found then
    -- Users created before the sign-up trigger existed get their profile now.
    if not public.ensure_user_profile(p_user) then
      return jsonb_build_object('allowed', false, 'reason', 'unknown_user');
    end if;
    select plan into v_plan from public.user_profiles where id = p_user;
  end if;
  v_limit := case when v_plan = 'mystic' then p_mystic_limit else p_free_limit end;
  v_reset_after := greatest(1, ceil(extract(epoch from (v_window + interval '1 hour' - now())))::integer);

  -- Count this call only while under the limit: the conditional upsert takes the row
  -- lock, so concurrent calls from any number of instances are counted exactly once each.
  if v_limit > 0 then
    insert into public.ai_usage as u (user_id, endpoint, window_start, count)
    values (p_user, p_endpoint, v_window, 1)
    on conflict (user_id, endpoint, window_start)
      do update set count = u.count + 1 where u.count < v_limit
    returning u.count into v_used;
  end if;

  if v_used is null then
    select coalesce(max(count), 0) into v_used
      from public.ai_usage
     where user_id = p_user and endpoint = p_endpoint and window_start = v_window;
    return jsonb_build_object('allowed', false, 'plan', v_plan, 'limit', v_limit, 'used', v_used,
                              'remaining', 0, 'reset_after', v_reset_after);
  end if;

  -- Old windows are no longer needed; dropping this user's keeps the table small.
  delete from public.ai_usage
   where user_id = p_user and window_start < v_window - interval '1 day';

  return jsonb_build_object('allowed', true, 'plan', v_plan, 'limit', v_limit, 'used', v_used,
                            'remaining', v_limit - v_used, 'reset_after', v_reset_after);
end
$$;

revoke all on function public.ai_quota_take(uuid, text, integer, integer) from public, anon, authenticated, service_role;
grant execute on function public.ai_quota_take(uuid, text, integer, integer) to service_role;
