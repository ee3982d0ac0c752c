-- Reconciliation: heal webhook deliveries that never arrived or never applied,
-- from Stripe's own event log (GET /v1/events, 30 days), and re-read subscriptions whose
-- stored read is old. The events themselves still go through the webhook's apply
-- functions (stripe_apply_*, stripe_record_event): one statement each, keyed on the event
-- id, so an event applied by the webhook, by another reconciler, or by both at once is
-- applied once. This file adds only the reconciler's cursor and the subscription re-read.
-- Every function returns one row (Spin 4.0.x hangs on zero rows).

-- The cursor: the newest event (in Stripe's list order) below which every event was
-- applied or recorded. One row.
create table public.stripe_reconcile_state (
  id boolean primary key default true check (id),
  anchor_event_id text check (anchor_event_id ~ '^evt_[A-Za-z0-9_]{1,200}$'),
  -- The anchor's `created` (Stripe's clock, seconds): the overlap window is measured
  -- back from it, and a cursor only moves forward by it.
  anchor_created bigint,
  updated_at timestamptz not null default now(),
  -- The last run's answer, for operators.
  last_run jsonb
);
alter table public.stripe_reconcile_state enable row level security;
revoke all on table public.stripe_reconcile_state from anon, authenticated, service_role;

-- When the customer's subscriptions were last listed from Stripe (the reconciler's
-- re-read), so customers without any subscription are not listed on every run.
alter table public.stripe_customers add column subscriptions_read_at timestamptz;

-- Which of these event ids (a jsonb array) are recorded already (applied, or recorded with no effect):
-- a jsonb array. The reconciler skips them without re-reading anything from Stripe.
create function public.stripe_events_known(p_ids jsonb) returns jsonb
  language sql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
  select coalesce(jsonb_agg(e.event_id), '[]'::jsonb)
    from public.stripe_events e
   where e.event_id in (select jsonb_array_elements_text(coalesce(p_ids, '[]'::jsonb)));
$$;

-- Customers whose subscriptions were last read (by an event's re-read or by the
-- reconciler) before now() - p_max_age_secs, oldest first, at most p_limit: a jsonb array
-- of customer ids.
create function public.stripe_reconcile_stale_customers(p_max_age_secs bigint, p_limit integer) returns jsonb
  language sql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
  select coalesce(jsonb_agg(w.customer_id order by w.last_read nulls first, w.customer_id), '[]'::jsonb)
    from (
      select t.customer_id, t.last_read
        from (
          select c.customer_id,
                 greatest(c.subscriptions_read_at,
                          (select max(s.stripe_updated_at) from public.stripe_subscriptions s
                            where s.customer_id = c.customer_id)) as last_read
            from public.stripe_customers c
           where c.deleted_at is null
        ) t
       where t.last_read is null or t.last_read < now() - make_interval(secs => p_max_age_secs)
       order by t.last_read nulls first, t.customer_id
       limit greatest(p_limit, 0)
    ) w;
$$;

-- A customer's subscriptions as just listed from Stripe, the list request started at
-- p_read_at_ms: the same stamped-read rule as stripe_apply_subscription (a row is only
-- overwritten by a read that started at the same time or later), then the user's plan.
-- p_subscriptions: [{"subscription_id", "status", "price_id", "current_period_start",
-- "current_period_end", "cancel_at_period_end"}]. Subscriptions of the customer that
-- Stripe no longer lists are left as stored.
-- Returns {"outcome":"applied"|"unknown_customer", "written": n, "plan"}.
create function public.stripe_store_customer_subscriptions(p_customer text, p_subscriptions jsonb, p_read_at_ms bigint)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid;
  v_read timestamptz := to_timestamp(p_read_at_ms / 1000.0);
  v_sub jsonb;
  v_written integer := 0;
  v_plan text;
begin
  select user_id into v_user from public.stripe_customers where customer_id = p_customer;
  if v_user is null then
    return jsonb_build_object('outcome', 'unknown_customer', 'written', 0);
  end if;
  -- The same lock order as the apply functions: the profile, then the rows.
  perform 1 from public.user_profiles where id = v_user for update;

  for v_sub in select * from jsonb_array_elements(coalesce(p_subscriptions, '[]'::jsonb)) loop
    insert into public.stripe_subscriptions as s (
      subscription_id, customer_id, user_id, status, price_id, current_period_start,
      current_period_end, cancel_at_period_end, stripe_updated_at
    ) values (
      v_sub ->> 'subscription_id', p_customer, v_user, v_sub ->> 'status', v_sub ->> 'price_id',
      to_timestamp((v_sub ->> 'current_period_start')::bigint),
      to_timestamp((v_sub ->> 'current_period_end')::bigint),
      coalesce((v_sub ->> 'cancel_at_period_end')::boolean, false), v_read
    )
    on conflict (subscription_id) do update set
      customer_id = excluded.customer_id,
      status = excluded.status,
      price_id = excluded.price_id,
      current_period_start = excluded.current_period_start,
      current_period_end = excluded.current_period_end,
      cancel_at_period_end = excluded.cancel_at_period_end,
      stripe_updated_at = excluded.stripe_updated_at
    where s.stripe_updated_at <= excluded.stripe_updated_at;
    if found then
      v_written := v_written + 1;
    end if;
  end loop;

  update public.stripe_customers
     set subscriptions_read_at = greatest(subscriptions_read_at, v_read)
   where customer_id = p_customer;

  update public.user_profiles p
     set plan = case when exists (
                  select 1 from public.stripe_subscriptions s
                   where s.user_id = v_user and s.status in ('active', 'trialing'))
                then 'mystic' else 'free' end
   where p.id = v_user
  returning p.plan into v_plan;

  return jsonb_build_object('outcome', 'applied', 'written', v_written, 'plan', v_plan);
end
$$;

revoke all on function public.stripe_events_known(jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_reconcile_stale_customers(bigint, integer) from public, anon, authenticated, service_role;
revoke all on function public.stripe_store_customer_subscriptions(text, jsonb, bigint)
  from public, anon, authenticated, service_role;
