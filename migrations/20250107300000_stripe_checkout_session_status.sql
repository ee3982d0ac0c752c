-- The customer's own Checkout Sessions, for the status endpoint the app calls on the page
-- Stripe returns the customer to (GET /stripe-checkout/session/{id}; docs/stripe.md).
--
-- Ownership. Every Checkout Session our checkout creates is recorded here with the user it
-- was created for (stripe_record_checkout_session, right after Stripe answers). The
-- status endpoint only looks at a session recorded for the caller, or whose order is
-- already the caller's (sessions created before this table existed): any other id is a
-- 404 before Stripe is asked about it.
--
-- Applying. A paid session is applied by the webhook's own path (events::apply and
-- stripe_apply_checkout_payment / stripe_apply_subscription); nothing here credits.
-- These functions only say what the database already shows, so that a session the
-- webhook (or an earlier call) applied is answered without calling Stripe.
--
-- Rate. Each status call is counted by ai_quota_take under the endpoint name
-- 'stripe-checkout-session' (per user, per clock hour), the project's one per-user
-- counter, so that the endpoint cannot be used to make us hammer Stripe.

create table public.stripe_checkout_sessions (
  session_id text primary key check (session_id ~ '^cs_[A-Za-z0-9_]{1,250}$'),
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  product text not null check (char_length(product) between 1 and 64),
  mode text not null check (mode in ('payment', 'subscription')),
  -- The subscription a subscription-mode session created, once the status endpoint has
  -- read it from Stripe: later calls answer from stripe_subscriptions.
  subscription_id text check (subscription_id ~ '^sub_[A-Za-z0-9_]{1,250}$'),
  created_at timestamptz not null default now()
);
create index stripe_checkout_sessions_user_id_idx on public.stripe_checkout_sessions (user_id, created_at);

alter table public.stripe_checkout_sessions enable row level security;
revoke all on table public.stripe_checkout_sessions from anon, authenticated, service_role;
grant all on table public.stripe_checkout_sessions to service_role;

-- Records a session our checkout just created for p_user. A retried checkout (the same
-- Idempotency-Key gives the same session) records nothing new. Records older than 30
-- days are dropped (a session expires within a day; an order, once applied, is found in
-- stripe_orders anyway). Returns {"recorded": true}.
create function public.stripe_record_checkout_session(p_session_id text, p_user uuid, p_product text, p_mode text)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  insert into public.stripe_checkout_sessions (session_id, user_id, product, mode)
  values (p_session_id, p_user, p_product, p_mode)
  on conflict (session_id) do nothing;
  delete from public.stripe_checkout_sessions
   where user_id = p_user and created_at < now() - interval '30 days';
  return jsonb_build_object('recorded', true);
end
$$;

-- What the database shows about p_user's session p_session_id. p_subscription_id, when
-- given, is the subscription the session created (just read from Stripe) and is stored
-- with the session. Returns
--   {"found": false}                                  not a session of p_user's
--   {"found": true, "settled", "status", "credited", "review", "product", "mode",
--    "tokens_added", "plan", "balance"}
-- where "settled" means the answer is final without asking Stripe: a token order that was
-- completed (or since refunded), failed or held for review, or a subscription session
-- whose subscription is stored. "status" is 'paid' or 'failed' when settled, else null.
create function public.stripe_checkout_session_state(p_user uuid, p_session_id text, p_subscription_id text)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_session public.stripe_checkout_sessions;
  v_order public.stripe_orders;
  v_subscription public.stripe_subscriptions;
  v_product text;
  v_mode text;
  v_settled boolean := false;
  v_status text;
  v_credited boolean := false;
  v_review boolean := false;
  v_tokens integer := 0;
  v_plan text;
  v_balance integer;
begin
  select * into v_session from public.stripe_checkout_sessions
   where session_id = p_session_id and user_id = p_user;
  select * into v_order from public.stripe_orders
   where checkout_session_id = p_session_id and user_id = p_user;
  if v_session.session_id is null and v_order.id is null then
    return jsonb_build_object('found', false);
  end if;
  v_product := coalesce(v_session.product, v_order.product);
  v_mode := coalesce(v_session.mode, 'payment');

  if p_subscription_id is not null and v_session.session_id is not null and v_session.subscription_id is null then
    update public.stripe_checkout_sessions set subscription_id = p_subscription_id
     where session_id = p_session_id;
    v_session.subscription_id := p_subscription_id;
  end if;

  if v_mode = 'payment' and v_order.status in ('completed', 'refunded') then
    v_settled := true;
    v_status := 'paid';
    v_credited := exists (
      select 1 from public.token_ledger
       where user_id = p_user and reason = 'purchase' and reference = p_session_id);
    v_tokens := case when v_credited then v_order.tokens else 0 end;
  elsif v_mode = 'payment' and v_order.status = 'review' then
    v_settled := true;
    v_status := 'paid';
    v_review := true;
  elsif v_mode = 'payment' and v_order.status = 'failed' then
    v_settled := true;
    v_status := 'failed';
  elsif v_mode = 'subscription' and v_session.subscription_id is not null then
    select * into v_subscription from public.stripe_subscriptions
     where subscription_id = v_session.subscription_id and user_id = p_user;
    if v_subscription.subscription_id is not null then
      v_settled := true;
      v_status := 'paid';
      v_credited := v_subscription.status in ('active', 'trialing');
    end if;
  end if;

  select plan, tokens into v_plan, v_balance from public.user_profiles where id = p_user;
  return jsonb_build_object(
    'found', true, 'settled', v_settled, 'status', v_status, 'credited', v_credited, 'review', v_review,
    'product', v_product, 'mode', v_mode, 'tokens_added', v_tokens, 'plan', v_plan, 'balance', v_balance);
end
$$;

-- One status call: counted against p_per_hour (ai_quota_take, endpoint
-- 'stripe-checkout-session'; a refused call is not counted), then the session's state
-- (stripe_checkout_session_state). Returns that state, or
--   {"rate_limited": true, "limit", "reset_after"}   over the hourly limit
--   {"found": false}                                  p_user has no profile
create function public.stripe_checkout_session_status(p_user uuid, p_session_id text, p_per_hour integer)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_quota jsonb;
begin
  v_quota := public.ai_quota_take(p_user, 'stripe-checkout-session', p_per_hour, p_per_hour);
  if v_quota ->> 'reason' = 'unknown_user' then
    return jsonb_build_object('found', false);
  end if;
  if not (v_quota ->> 'allowed')::boolean then
    return jsonb_build_object('rate_limited', true, 'limit', v_quota -> 'limit', 'reset_after', v_quota -> 'reset_after');
  end if;
  return public.stripe_checkout_session_state(p_user, p_session_id, null);
end
$$;

revoke all on function public.stripe_record_checkout_session(text, uuid, text, text)
  from public, anon, authenticated, service_role;
revoke all on function public.stripe_checkout_session_state(uuid, text, text)
  from public, anon, authenticated, service_role;
revoke all on function public.stripe_checkout_session_status(uuid, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.stripe_record_checkout_session(text, uuid, text, text) to service_role;
grant execute on function public.stripe_checkout_session_state(uuid, text, text) to service_role;
grant execute on function public.stripe_checkout_session_status(uuid, text, integer) to service_role;
