-- Applying Stripe webhook events, and the customer mapping the checkout endpoint keeps.
--
-- Exactly once. Every apply function below is ONE statement for its caller, and its first
-- write is the event's row in stripe_events (insert ... on conflict do nothing). The
-- event's effects and its row therefore commit together or not at all:
-- * a redelivery finds the row and changes nothing ("duplicate");
-- * concurrent deliveries of one event block on the primary key until the first commits,
--   then see its row ("duplicate"); if the first rolls back, the next one applies it;
-- * a failure (database down, a trap) records nothing, so Stripe's retry applies it.
-- Token credits are also keyed in the ledger ((user, 'purchase', checkout session id) is
-- unique), so even two different events for one session credit it once.
--
-- Out-of-order subscription events: the endpoint does not trust the event's copy of a
-- subscription. It re-reads the subscription from Stripe's API and passes the time its
-- read started (p_read_at_ms); the row is overwritten only by a read that started at
-- the same time or later (stripe_subscriptions.stripe_updated_at). Why: Stripe sends an
-- event after the change it describes, so the read made for the last event sees the
-- final state, whatever order the events arrive in, and an older read that finishes late
-- cannot overwrite it. Event `created` times are whole seconds and a checkout makes
-- several subscription events within the same second (created/incomplete, updated/active,
-- invoice.paid), so comparing them cannot order those.
--
-- Locks, in this order everywhere: the stripe_events row, then the user's profile (as
-- every token function does), then the order or subscription row.

alter table public.stripe_orders
  -- Tokens taken back for refunds, and tokens that could not be taken back because the
  -- user had already spent them (the shortfall, for operators to follow up).
  add column tokens_reversed integer not null default 0 check (tokens_reversed >= 0),
  add column refund_shortfall integer not null default 0 check (refund_shortfall >= 0),
  add constraint stripe_orders_reversal_bounded check (tokens_reversed + refund_shortfall <= tokens);

-- Records the event; false when it was recorded before (by a delivery that committed, or
-- that commits while this one waits on the primary key).
create function public.stripe_begin_event(p_event_id text, p_type text, p_created bigint) returns boolean
  language plpgsql
  set search_path = public, pg_temp
  as $$
begin
  if p_event_id is null or p_event_id !~ '^evt_[A-Za-z0-9_]{1,200}$' then
    raise exception using errcode = '22023', message = 'a Stripe event id (evt_...) is required';
  end if;
  insert into public.stripe_events (event_id, type, created, outcome)
  values (p_event_id, p_type, to_timestamp(p_created), 'applying')
  on conflict (event_id) do nothing;
  return found;
end
$$;
-- PL/pgSQL, not LANGUAGE sql: a SQL function with a SET clause is never inlined and its
-- body is planned again on every call; PL/pgSQL keeps each statement's plan for the
-- connection's lifetime (measured with pgbench on this hot path).
create function public.stripe_finish_event(p_event_id text, p_outcome jsonb) returns jsonb
  language plpgsql
  set search_path = public, pg_temp
  as $$
begin
  update public.stripe_events set outcome = p_outcome ->> 'outcome' where event_id = p_event_id;
  return p_outcome;
end
$$;

-- An event with no effects (an unknown type, or one that is not ours), recorded so it is
-- visible to operators and answered 2xx. Returns {"outcome": p_outcome | "duplicate"}.
create function public.stripe_record_event(p_event_id text, p_type text, p_created bigint, p_outcome text)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;
  return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', p_outcome));
end
$$;

-- A subscription as just read from Stripe's API (see the top of this file for why a
-- re-read, and p_read_at_ms). The user is p_user (the subscription's metadata, written by
-- our checkout) when that profile exists, else the owner of p_customer. The row is
-- written unless a read that started later is already stored ("stale"), and the user's
-- plan follows: 'mystic' while any of their subscriptions is active or trialing.
-- Returns {"outcome":"applied"|"stale"|"duplicate"|"unknown_customer", "plan"}.
create function public.stripe_apply_subscription(
  p_event_id text,
  p_type text,
  p_created bigint,
  p_subscription_id text,
  p_customer text,
  p_user uuid,
  p_status text,
  p_price text,
  p_period_start bigint,
  p_period_end bigint,
  p_cancel_at_period_end boolean,
  p_read_at_ms bigint
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid;
  v_written boolean;
  v_plan text;
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;

  select id into v_user from public.user_profiles where id = p_user;
  if v_user is null then
    select c.user_id into v_user from public.stripe_customers c where c.customer_id = p_customer;
  end if;
  if v_user is null then
    return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', 'unknown_customer'));
  end if;
  perform 1 from public.user_profiles where id = v_user for update;

  -- A subscription made outside our checkout still maps its customer (one per user).
  insert into public.stripe_customers (user_id, customer_id) values (v_user, p_customer)
  on conflict do nothing;

  insert into public.stripe_subscriptions as s (
    subscription_id, customer_id, user_id, status, price_id, current_period_start,
    current_period_end, cancel_at_period_end, stripe_updated_at
  ) values (
    p_subscription_id, p_customer, v_user, p_status, p_price, to_timestamp(p_period_start),
    to_timestamp(p_period_end), coalesce(p_cancel_at_period_end, false), to_timestamp(p_read_at_ms / 1000.0)
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
  v_written := found;

  update public.user_profiles p
     set plan = case when exists (
                  select 1 from public.stripe_subscriptions s
                   where s.user_id = v_user and s.status in ('active', 'trialing'))
                then 'mystic' else 'free' end
   where p.id = v_user
  returning p.plan into v_plan;

  return public.stripe_finish_event(p_event_id, jsonb_build_object(
    'outcome', case when v_written then 'applied' else 'stale' end, 'plan', v_plan));
end
$$;

-- Maps the user to p_customer unless they already have a customer, and returns the
-- user's customer either way. Two first checkouts racing both create (the same, thanks to
-- Stripe's Idempotency-Key) customer and call this; the primary key lets one mapping in,
-- and both continue with it. A mapping to a customer deleted in Stripe is replaced.
-- Returns null when p_customer belongs to another user.
create function public.stripe_link_customer(p_user uuid, p_customer text) returns text
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  insert into public.stripe_customers as c (user_id, customer_id) values (p_user, p_customer)
  on conflict (user_id) do update set customer_id = excluded.customer_id, deleted_at = null
    where c.deleted_at is not null;
  return (select customer_id from public.stripe_customers where user_id = p_user and deleted_at is null);
exception when unique_violation then
  -- p_customer is mapped to another user.
  return null;
end
$$;

-- `customer.deleted`: the mapping is kept for the history but no longer used, so the
-- user's next checkout creates a new customer.
-- Returns {"outcome":"applied"|"duplicate"|"unknown_customer"}.
create function public.stripe_apply_customer_deleted(p_event_id text, p_type text, p_created bigint, p_customer text)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;
  update public.stripe_customers set deleted_at = coalesce(deleted_at, now()) where customer_id = p_customer;
  return public.stripe_finish_event(p_event_id, jsonb_build_object(
    'outcome', case when found then 'applied' else 'unknown_customer' end));
end
$$;

revoke all on function public.stripe_begin_event(text, text, bigint) from public, anon, authenticated, service_role;
revoke all on function public.stripe_finish_event(text, jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_record_event(text, text, bigint, text) from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_subscription(text, text, bigint, text, text, uuid, text, text, bigint, bigint, boolean, bigint)
  from public, anon, authenticated, service_role;
revoke all on function public.stripe_link_customer(uuid, text) from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_customer_deleted(text, text, bigint, text) from public, anon, authenticated, service_role;

grant execute on function public.stripe_record_event(text, text, bigint, text) to service_role;
grant execute on function public.stripe_apply_subscription(text, text, bigint, text, text, uuid, text, text, bigint, bigint, boolean, bigint) to service_role;
grant execute on function public.stripe_link_customer(uuid, text) to service_role;
grant execute on function public.stripe_apply_customer_deleted(text, text, bigint, text) to service_role;
