-- Reminders by Web Push: the browsers' push subscriptions, the reminder preferences
-- read from settings, and the deliveries that keep it to one reminder a local day.
--
-- Preferences live in the profile's settings, which the user writes (PostgREST or the
-- app): settings.reminders = {"enabled": true, "time": "HH:MM", "days": [1..7]}
-- (ISO weekdays, 1 = Monday; absent = every day). Off unless enabled is true. A value of
-- another shape is treated as off, never as an error: the sender must not stop on one
-- user's settings.

create table public.push_subscriptions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  -- The push service's URL for this browser. Unique: a browser profile has one, and it
  -- follows whoever subscribed last on that browser.
  endpoint text not null unique check (char_length(endpoint) between 12 and 2048),
  -- The browser's keys (RFC 8291): its P-256 public key and the 16-byte auth secret,
  -- base64url as PushSubscription.toJSON() gives them.
  p256dh text not null check (p256dh ~ '^[A-Za-z0-9_-]{86,88}$'),
  auth text not null check (auth ~ '^[A-Za-z0-9_-]{22,24}$'),
  created_at timestamptz not null default now(),
  last_sent_at timestamptz,
  -- A push service that answered 429 named when to come back.
  retry_after timestamptz
);

create index push_subscriptions_user_id_idx on public.push_subscriptions (user_id);

-- One row per subscription and local day that a reminder was claimed for: the claim
-- (insert, unique) is what keeps concurrent or repeated runs to one push a day.
create table public.push_deliveries (
  subscription_id uuid not null references public.push_subscriptions (id) on delete cascade,
  local_day date not null,
  claimed_at timestamptz not null default now(),
  -- claimed, then sent or failed (a 4xx other than 404/410/429: not retried that day).
  status text not null default 'claimed' check (status in ('claimed', 'sent', 'failed')),
  primary key (subscription_id, local_day)
);

alter table public.push_subscriptions enable row level security;
alter table public.push_deliveries enable row level security;

-- Users see and remove their own devices; adding one goes through push_subscribe().
create policy push_subscriptions_own_select on public.push_subscriptions
  for select to authenticated using (user_id = auth.uid());
create policy push_subscriptions_own_delete on public.push_subscriptions
  for delete to authenticated using (user_id = auth.uid());
revoke all on public.push_subscriptions, public.push_deliveries from anon, authenticated, service_role;
grant select, delete on public.push_subscriptions to authenticated;

-- The reminder preferences of a settings object, checked, or null (off).
create function public.reminder_preferences(p_settings jsonb) returns jsonb
  language sql
  immutable
  as $$
  select case
           when jsonb_typeof(r) = 'object'
                and r->'enabled' = 'true'::jsonb
                and coalesce(r->>'time', '') ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'
                and (nullif(r->'days', 'null'::jsonb) is null
                     or (jsonb_typeof(r->'days') = 'array'
                         and jsonb_array_length(r->'days') between 1 and 7
                         and not jsonb_path_exists(r->'days', '$[*] ? (@.type() != "number" || @ < 1 || @ > 7 || @ != @.floor())')))
           then jsonb_build_object('time', r->>'time',
                                   'days', coalesce(nullif(r->'days', 'null'::jsonb), '[1,2,3,4,5,6,7]'::jsonb))
         end
  from (select p_settings->'reminders' as r) s
$$;

-- Stores (or moves to this user) a browser's subscription. One row.
create function public.push_subscribe(p_user uuid, p_endpoint text, p_p256dh text, p_auth text)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_created boolean;
begin
  if not exists (select 1 from public.user_profiles where id = p_user) then
    return jsonb_build_object('outcome', 'user_not_found');
  end if;
  insert into public.push_subscriptions as s (user_id, endpoint, p256dh, auth)
  values (p_user, p_endpoint, p_p256dh, p_auth)
  on conflict (endpoint) do update
    set user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth,
        retry_after = null
  returning (xmax = 0) into v_created;
  return jsonb_build_object('outcome', case when v_created then 'created' else 'updated' end,
                            'devices', (select count(*) from public.push_subscriptions where user_id = p_user));
end
$$;

-- Removes the user's subscription for this endpoint, if any. One row.
create function public.push_unsubscribe(p_user uuid, p_endpoint text) returns jsonb
  language sql
  security definer
  set search_path = public, pg_temp
  as $$
  with gone as (
    delete from public.push_subscriptions where user_id = p_user and endpoint = p_endpoint returning 1
  )
  select jsonb_build_object('removed', exists (select 1 from gone))
$$;

-- Claims up to p_limit due deliveries and returns them with what the message needs:
-- enabled preferences; today a chosen weekday in the user's zone; the chosen time
-- passed; no session counted for today; the device not told to wait (429); not claimed
-- today yet. The claim is the insert into push_deliveries (its key makes a second run,
-- concurrent or later, skip it). `more` says whether due deliveries were left for the
-- next run.
create function public.push_claim_due(p_now timestamptz, p_limit integer) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_claimed jsonb;
  v_more boolean;
begin
  with candidates as (
    select s.id, s.endpoint, s.p256dh, s.auth, p.id as user_id,
           public.current_streak(p.session_streak, p.last_session_date, p.settings->>'timezone') as streak,
           (p_now at time zone public.effective_timezone(p.settings->>'timezone')) as local_now,
           public.reminder_preferences(p.settings) as prefs
    from public.push_subscriptions s
    join public.user_profiles p on p.id = s.user_id
    where (s.retry_after is null or s.retry_after <= p_now)
      and p.settings->'reminders'->'enabled' = 'true'::jsonb
  ),
  due as (
    select c.*, c.local_now::date as local_day
    from candidates c
    where c.prefs is not null
      and c.prefs->'days' @> to_jsonb(extract(isodow from c.local_now)::integer)
      and c.local_now::time >= (c.prefs->>'time')::time
      and not exists (select 1 from public.sessions x
                      where x.user_id = c.user_id and x.local_date = c.local_now::date)
      and not exists (select 1 from public.push_deliveries d
                      where d.subscription_id = c.id and d.local_day = c.local_now::date)
    order by c.id
    limit p_limit + 1
  ),
  chosen as (select * from due order by id limit p_limit),
  claimed as (
    insert into public.push_deliveries (subscription_id, local_day)
    select id, local_day from chosen
    on conflict do nothing
    returning subscription_id
  )
  select coalesce(jsonb_agg(jsonb_build_object(
           'subscription_id', c.id, 'user_id', c.user_id, 'endpoint', c.endpoint,
           'p256dh', c.p256dh, 'auth', c.auth, 'streak', c.streak, 'local_day', c.local_day)
           order by c.id), '[]'::jsonb),
         (select count(*) from due) > p_limit
    into v_claimed, v_more
  from chosen c join claimed k on k.subscription_id = c.id;
  return jsonb_build_object('claimed', v_claimed, 'more', v_more);
end
$$;

-- What a push service answered for one claimed delivery. One row.
--   sent     201: done for the day
--   gone     404/410: the subscription no longer exists; removed
--   retry    429/5xx/unreachable: the claim is released so a later run sends it, not
--            before p_retry_after (429's Retry-After) when given
--   failed   another refusal: not retried today
create function public.push_record(p_subscription uuid, p_local_day date, p_result text, p_retry_after timestamptz)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  case p_result
    when 'sent' then
      update public.push_deliveries set status = 'sent'
        where subscription_id = p_subscription and local_day = p_local_day;
      update public.push_subscriptions set last_sent_at = now() where id = p_subscription;
    when 'gone' then
      delete from public.push_subscriptions where id = p_subscription;
    when 'retry' then
      delete from public.push_deliveries where subscription_id = p_subscription and local_day = p_local_day;
      update public.push_subscriptions set retry_after = p_retry_after where id = p_subscription;
    when 'failed' then
      update public.push_deliveries set status = 'failed'
        where subscription_id = p_subscription and local_day = p_local_day;
    else
      raise exception 'push_record: unknown result %', p_result using errcode = '22023';
  end case;
  return jsonb_build_object('recorded', p_result);
end
$$;

-- Called by the components (the database owner), never through PostgREST.
revoke all on function public.push_subscribe(uuid, text, text, text) from public, anon, authenticated, service_role;
revoke all on function public.push_unsubscribe(uuid, text) from public, anon, authenticated, service_role;
revoke all on function public.push_claim_due(timestamptz, integer) from public, anon, authenticated, service_role;
revoke all on function public.push_record(uuid, date, text, timestamptz) from public, anon, authenticated, service_role;
