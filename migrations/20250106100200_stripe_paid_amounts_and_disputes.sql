-- Stripe: a credit is tied to what was paid, and chargebacks take it back. Same
-- exactly-once pattern as 20250102000000_stripe_functions.sql:
-- each apply function is one statement whose first write is the event's row.
--
-- Paid amounts. Before crediting, the webhook re-reads the session's line items from
-- Stripe and checks them against the catalog (one line, the product's configured price,
-- quantity 1; the amount paid and its currency equal that price's). A session that fails
-- a check, or says `no_payment_required`, becomes an order in status 'review' with the
-- reason, and credits nothing; an operator decides. 'review' is final like 'failed'.
--
-- Disputes. `charge.dispute.created` and `charge.dispute.closed` both record the dispute
-- (stripe_disputes; a closed dispute stays closed) and then settle it against its order:
-- * while the dispute is open or was lost, the order's tokens not yet taken back (by a
--   refund or another dispute) are taken back, never below zero; what the user had
--   already spent is the order's refund_shortfall, as for refunds;
-- * once it is won (or an inquiry closed without a chargeback), what it took is given
--   back (ledger reason 'dispute_won') and its shortfall is cleared.
-- The result depends only on the dispute's final state, not on the order events arrive
-- in: a `closed` (won) that arrives first means the later `created` takes nothing. A
-- dispute that arrives before its order is credited is recorded and settled when the
-- checkout credits the order.

alter table public.stripe_orders drop constraint stripe_orders_status_check;
alter table public.stripe_orders
  add constraint stripe_orders_status_check
    check (status in ('pending', 'completed', 'failed', 'refunded', 'review')),
  -- Why an order is held for review instead of credited.
  add column review_reason text check (char_length(review_reason) <= 200),
  add constraint stripe_orders_review_has_reason check ((status = 'review') = (review_reason is not null));

alter table public.token_ledger drop constraint token_ledger_reason_check;
alter table public.token_ledger add constraint token_ledger_reason_check check (reason in (
  'session_complete', 'level_up', 'streak_bonus', 'purchase', 'refund', 'spend', 'spend_refund',
  'dispute_won' -- tokens a dispute took back, given back when it was won; reference 'dispute:<id>'
));

create table public.stripe_disputes (
  dispute_id text primary key,
  charge_id text,
  payment_intent_id text not null,
  amount bigint,
  status text not null,
  closed boolean not null default false,
  -- Set once the dispute has taken the order's tokens back (while open or lost).
  applied boolean not null default false,
  tokens_taken integer not null default 0 check (tokens_taken >= 0),
  shortfall integer not null default 0 check (shortfall >= 0),
  -- Set once a won dispute has given back what it took.
  restored boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index stripe_disputes_payment_intent_id_idx on public.stripe_disputes (payment_intent_id);
create trigger stripe_disputes_set_updated_at
  before update on public.stripe_disputes
  for each row execute function public.set_updated_at();

alter table public.stripe_disputes enable row level security;
revoke all on table public.stripe_disputes from anon, authenticated, service_role;
grant all on table public.stripe_disputes to service_role;

-- `charge.dispute.created` / `charge.dispute.closed` (p_closed). Returns
-- {"outcome":"applied"|"duplicate"|"no_order", "taken", "given_back", "shortfall"}.
create function public.stripe_apply_dispute(
  p_event_id text,
  p_type text,
  p_created bigint,
  p_dispute_id text,
  p_charge_id text,
  p_payment_intent text,
  p_amount bigint,
  p_status text,
  p_closed boolean
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid;
  v_order_id bigint;
begin
  if p_dispute_id is null or p_payment_intent is null or p_status is null or p_closed is null then
    raise exception using errcode = '22023', message = 'stripe_apply_dispute needs a dispute, a payment intent and a status';
  end if;
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;

  select user_id into v_user from public.stripe_orders where payment_intent_id = p_payment_intent;
  if v_user is not null then
    perform 1 from public.user_profiles where id = v_user for update;
    select id into v_order_id from public.stripe_orders where payment_intent_id = p_payment_intent for update;
  end if;

  -- The dispute's latest state; once closed, a late `created` cannot reopen it.
  insert into public.stripe_disputes as d (dispute_id, charge_id, payment_intent_id, amount, status, closed)
  values (p_dispute_id, p_charge_id, p_payment_intent, p_amount, p_status, p_closed)
  on conflict (dispute_id) do update set
    status = case when d.closed then d.status else excluded.status end,
    closed = d.closed or excluded.closed,
    amount = coalesce(excluded.amount, d.amount),
    charge_id = coalesce(d.charge_id, excluded.charge_id);

  if v_order_id is null then
    -- Not a token order (a subscription's charge), or its checkout is not applied yet:
    -- recorded, and settled by the checkout when it credits the order.
    return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', 'no_order'));
  end if;
  return public.stripe_finish_event(p_event_id,
    jsonb_build_object('outcome', 'applied') || public.stripe_settle_disputes(v_order_id));
end
$$;

-- Records a Checkout Session's order and credits its tokens when it was paid, exactly
-- once per event. p_status 'review' (with p_review_reason) holds an order without
-- crediting it. A 'completed' order must have been paid at the price its product is sold
-- at now: p_paid_price_id (the session's one line item, whose amount the caller checked)
-- must be p_price_override (the product's stripe_price_* variable) or, without one, the
-- catalog's stored price (stripe_catalog(), 20250106300000_stripe_catalog.sql); else
-- the order is held for review ('price_not_configured' or 'price_mismatch'). Checked here,
-- in the statement that credits, so a verified delivery stays one statement. Disputes
-- recorded before the credit are settled right after it.
-- Returns {"outcome":"applied"|"duplicate"|"unknown_user", "order_status", "credited",
-- "review_reason"}.
create function public.stripe_apply_checkout_payment(
  p_event_id text,
  p_type text,
  p_created bigint,
  p_session_id text,
  p_user uuid,
  p_product text,
  p_tokens integer,
  p_customer text,
  p_payment_intent text,
  p_amount_total bigint,
  p_currency text,
  p_payment_status text,
  p_status text,
  p_review_reason text,
  p_paid_price_id text,
  p_price_override text
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_order public.stripe_orders;
  v_credited integer := 0;
  v_expected_price text;
begin
  if p_status not in ('pending', 'completed', 'failed', 'review')
     or (p_status = 'review') <> (p_review_reason is not null) then
    raise exception using errcode = '22023',
      message = format('order status %L (reason %L) is not pending, completed, failed or review with a reason', p_status, p_review_reason);
  end if;
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;

  if p_status = 'completed' then
    v_expected_price := coalesce(p_price_override,
                                 public.stripe_catalog('[]'::jsonb) -> 'prices' -> p_product ->> 'price_id');
    if v_expected_price is null then
      p_status := 'review';
      p_review_reason := 'price_not_configured';
    elsif p_paid_price_id is distinct from v_expected_price then
      p_status := 'review';
      p_review_reason := 'price_mismatch';
    end if;
  end if;

  perform 1 from public.user_profiles where id = p_user for update;
  if not found then
    return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', 'unknown_user'));
  end if;

  insert into public.stripe_orders as o (
    checkout_session_id, payment_intent_id, customer_id, user_id, product, tokens,
    amount_total, currency, payment_status, status, review_reason
  ) values (
    p_session_id, p_payment_intent, p_customer, p_user, p_product, p_tokens,
    p_amount_total, p_currency, p_payment_status, p_status, p_review_reason
  )
  on conflict (checkout_session_id) do update set
    payment_intent_id = coalesce(excluded.payment_intent_id, o.payment_intent_id),
    customer_id = coalesce(excluded.customer_id, o.customer_id),
    amount_total = coalesce(excluded.amount_total, o.amount_total),
    currency = coalesce(excluded.currency, o.currency),
    payment_status = case when o.status = 'pending' then excluded.payment_status else o.payment_status end,
    review_reason = case when o.status = 'pending' then excluded.review_reason else o.review_reason end,
    status = case when o.status = 'pending' then excluded.status else o.status end
  returning * into v_order;

  if v_order.status in ('completed', 'refunded') then
    v_credited := public.stripe_credit_purchase(v_order.user_id, v_order.tokens, v_order.checkout_session_id);
    if v_credited > 0 then
      perform public.stripe_settle_disputes(v_order.id);
    end if;
  end if;

  return public.stripe_finish_event(p_event_id, jsonb_build_object(
    'outcome', 'applied', 'order_status', v_order.status, 'credited', v_credited,
    'review_reason', v_order.review_reason));
end
$$;

revoke all on function public.stripe_apply_dispute(text, text, bigint, text, text, text, bigint, text, boolean)
  from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_checkout_payment(text, text, bigint, text, uuid, text, integer, text, text, bigint, text, text, text, text, text, text)
  from public, anon, authenticated, service_role;
grant execute on function public.stripe_apply_dispute(text, text, bigint, text, text, text, bigint, text, boolean) to service_role;
grant execute on function public.stripe_apply_checkout_payment(text, text, bigint, text, uuid, text, integer, text, text, bigint, text, text, text, text, text, text) to service_role;
