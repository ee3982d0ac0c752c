-- Paid money right in any order: refunds and disputes are state, an order is settled to
-- what that state says, and what cannot be taken back is a debt that later credits pay.
--
-- Refunds are kept. `charge.refunded` records the charge's cumulative refund in
-- stripe_refunds whether or not its order exists yet (a refund issued in the Dashboard
-- after a failed delivery, before reconcile or Stripe's retry applies the purchase), as
-- stripe_disputes keeps disputes. Whenever the order is credited, refunded or disputed,
-- stripe_settle_order brings it to its target:
--   target = greatest(refund target, dispute target)
--   refund target  = the order's tokens x refunded / captured (rounded down), all of them
--                    once the charge is fully refunded (the largest refund recorded);
--   dispute target = all the order's tokens while any dispute of its payment is open or
--                    was lost; 0 once every one is won (or an inquiry closed).
-- The order's tokens_reversed (taken from the balance) plus refund_shortfall (put into
-- debt) always equal the target after a settle: above it, the difference is taken;
-- below it (a dispute won), it is given back. The target depends only on what Stripe
-- says now, never on the order events arrived in, so neither does the final state.
--
-- Debts. A reversal takes what the balance holds and records the rest in token_debts
-- (the balance itself never goes below zero, so every reader of user_profiles.tokens
-- and token_ledger.balance_after keeps its rule). The ledger still sums to the balance:
-- the debt is beside it, not in it. A debt is paid first from any credit: a purchase's
-- credit (stripe_credit_purchase) and a give-back pay it at once; reward tokens earned
-- while in debt pay it at the next spend (spend_tokens_for). Each payment is a ledger row
-- (reason 'refund', reference 'debt', then 'debt:2', ...). While a debt remains, spend_tokens_for refuses
-- every paid feature with reason 'account_in_debt' (the endpoints' 402). A give-back
-- first cancels debt, then credits what is left. After every step either the balance or
-- the debt is zero, so (balance, debt) is fixed by balance - debt, which every order of
-- arrival brings to the same value.
--
-- Ledger references: a take is reason 'refund' with 'refund:<charge>:<amount refunded>'
-- when the refund drives it, else 'dispute:<dispute id>'; a give-back is 'dispute_won',
-- 'dispute:<dispute id>'. A reference already used by the user for that reason gets
-- ':2', ':3', ... (a refund and a dispute can move one order more than once).

create table public.token_debts (
  user_id uuid primary key references public.user_profiles (id) on delete cascade,
  amount integer not null default 0 check (amount >= 0),
  updated_at timestamptz not null default now()
);
alter table public.token_debts enable row level security;
revoke all on table public.token_debts from anon, authenticated, service_role;
grant select on table public.token_debts to authenticated;
grant all on table public.token_debts to service_role;
create policy "own debt: read" on public.token_debts
  for select to authenticated using (user_id = (select auth.uid()));

create table public.stripe_refunds (
  charge_id text primary key,
  payment_intent_id text not null,
  amount_captured bigint,
  -- Cumulative, as Stripe reports it: only grows.
  amount_refunded bigint not null check (amount_refunded >= 0),
  fully_refunded boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index stripe_refunds_payment_intent_id_idx on public.stripe_refunds (payment_intent_id);
alter table public.stripe_refunds enable row level security;
revoke all on table public.stripe_refunds from anon, authenticated, service_role;
grant all on table public.stripe_refunds to service_role;

-- A ledger reference for (user, reason) not used yet: p_base, else p_base:2, p_base:3, ...
create function public.token_ledger_free_reference(p_user uuid, p_reason text, p_base text) returns text
  language plpgsql
  stable
  set search_path = public, pg_temp
  as $$
declare
  v_reference text := p_base;
  v_n integer := 1;
begin
  while exists (select 1 from public.token_ledger where user_id = p_user and reason = p_reason and reference = v_reference) loop
    v_n := v_n + 1;
    v_reference := p_base || ':' || v_n;
  end loop;
  return v_reference;
end
$$;

-- Pays the user's debt from their balance, as far as it goes. The caller holds the
-- profile lock. Returns what was paid.
create function public.token_debt_pay(p_user uuid) returns integer
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_debt integer;
  v_balance integer;
  v_paid integer;
begin
  select amount into v_debt from public.token_debts where user_id = p_user for update;
  if coalesce(v_debt, 0) = 0 then
    return 0;
  end if;
  select tokens into v_balance from public.user_profiles where id = p_user;
  v_paid := least(v_debt, v_balance);
  if v_paid > 0 then
    update public.user_profiles set tokens = tokens - v_paid where id = p_user returning tokens into v_balance;
    insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
    values (p_user, -v_paid, 'refund',
            public.token_ledger_free_reference(p_user, 'refund', 'debt'), v_balance);
    update public.token_debts set amount = amount - v_paid, updated_at = now() where user_id = p_user;
  end if;
  return v_paid;
end
$$;

-- Credits a purchase once per (user, checkout session), then pays any debt from it. The
-- caller holds the profile lock. Returns the tokens credited (before the debt payment).
create or replace function public.stripe_credit_purchase(p_user uuid, p_tokens integer, p_session_id text) returns integer
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_balance integer;
begin
  if p_tokens <= 0 or exists (
    select 1 from public.token_ledger
     where user_id = p_user and reason = 'purchase' and reference = p_session_id
  ) then
    return 0;
  end if;
  update public.user_profiles set tokens = tokens + p_tokens where id = p_user
    returning tokens into v_balance;
  insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
  values (p_user, p_tokens, 'purchase', p_session_id, v_balance);
  perform public.token_debt_pay(p_user);
  return p_tokens;
end
$$;

-- Brings a credited order to its target (see the top of this file). The caller holds the
-- user's profile lock and the order's row lock. Returns {"taken", "given_back",
-- "shortfall", "debt"} for this call (shortfall: what went into debt).
create function public.stripe_settle_order(p_order_id bigint) returns jsonb
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_order public.stripe_orders;
  v_refund public.stripe_refunds;
  v_refund_target integer := 0;
  v_dispute text;
  v_target integer;
  v_current integer;
  v_balance integer;
  v_debt integer;
  v_move integer;
  v_taken integer := 0;
  v_short integer := 0;
  v_given integer := 0;
  v_cancel integer := 0;
begin
  select * into v_order from public.stripe_orders where id = p_order_id;
  if v_order.payment_intent_id is null or v_order.status not in ('completed', 'refunded')
     or not exists (select 1 from public.token_ledger
                     where user_id = v_order.user_id and reason = 'purchase' and reference = v_order.checkout_session_id) then
    return jsonb_build_object('taken', 0, 'given_back', 0, 'shortfall', 0, 'debt', 0);
  end if;

  select * into v_refund from public.stripe_refunds
   where payment_intent_id = v_order.payment_intent_id
   order by fully_refunded desc, amount_refunded desc, charge_id limit 1;
  if found then
    v_refund_target := case
      when v_refund.fully_refunded or coalesce(v_refund.amount_captured, 0) <= 0 then v_order.tokens
      else least(v_order.tokens, (v_order.tokens::bigint * v_refund.amount_refunded / v_refund.amount_captured)::integer)
    end;
  end if;
  select dispute_id into v_dispute from public.stripe_disputes
   where payment_intent_id = v_order.payment_intent_id and not (closed and status in ('won', 'warning_closed'))
   order by dispute_id limit 1;
  v_target := greatest(v_refund_target, case when v_dispute is not null then v_order.tokens else 0 end);
  v_current := v_order.tokens_reversed + v_order.refund_shortfall;
  select tokens into v_balance from public.user_profiles where id = v_order.user_id;
  insert into public.token_debts (user_id) values (v_order.user_id) on conflict (user_id) do nothing;
  select amount into v_debt from public.token_debts where user_id = v_order.user_id for update;

  if v_target > v_current then
    v_move := v_target - v_current;
    v_taken := least(v_move, v_balance);
    v_short := v_move - v_taken;
    if v_taken > 0 then
      update public.user_profiles set tokens = tokens - v_taken where id = v_order.user_id returning tokens into v_balance;
      insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
      values (v_order.user_id, -v_taken, 'refund',
              public.token_ledger_free_reference(v_order.user_id, 'refund',
                case when v_refund_target >= v_target
                     then 'refund:' || v_refund.charge_id || ':' || v_refund.amount_refunded
                     else 'dispute:' || v_dispute end),
              v_balance);
    end if;
    if v_short > 0 then
      update public.token_debts set amount = amount + v_short, updated_at = now() where user_id = v_order.user_id;
    end if;
    update public.stripe_orders
       set tokens_reversed = tokens_reversed + v_taken, refund_shortfall = refund_shortfall + v_short
     where id = v_order.id;
  elsif v_target < v_current then
    -- Only a dispute won lowers the target.
    v_move := v_current - v_target;
    v_cancel := least(v_move, v_debt, v_order.refund_shortfall);
    v_given := v_move - v_cancel;
    if v_cancel > 0 then
      update public.token_debts set amount = amount - v_cancel, updated_at = now() where user_id = v_order.user_id;
    end if;
    if v_given > 0 then
      select dispute_id into v_dispute from public.stripe_disputes
       where payment_intent_id = v_order.payment_intent_id
       order by updated_at desc, dispute_id limit 1;
      update public.user_profiles set tokens = tokens + v_given where id = v_order.user_id returning tokens into v_balance;
      insert into public.token_ledger (user_id, delta, reason, reference, balance_after)
      values (v_order.user_id, v_given, 'dispute_won',
              public.token_ledger_free_reference(v_order.user_id, 'dispute_won', 'dispute:' || coalesce(v_dispute, v_order.payment_intent_id)),
              v_balance);
    end if;
    -- What went into debt comes off the shortfall first, the rest off what was taken.
    update public.stripe_orders
       set refund_shortfall = refund_shortfall - least(v_move, refund_shortfall),
           tokens_reversed = tokens_reversed - (v_move - least(v_move, refund_shortfall))
     where id = v_order.id;
    perform public.token_debt_pay(v_order.user_id);
  end if;

  update public.stripe_orders
     set status = case when v_refund.fully_refunded then 'refunded' else status end
   where id = v_order.id and v_refund.fully_refunded;
  select amount into v_debt from public.token_debts where user_id = v_order.user_id;
  return jsonb_build_object('taken', v_taken, 'given_back', v_given, 'shortfall', v_short, 'debt', v_debt);
end
$$;

-- Settles an order after one of its disputes changed, or after it was credited: the
-- callers (stripe_apply_dispute, stripe_apply_checkout_payment) keep this name; the
-- rules are stripe_settle_order's.
create or replace function public.stripe_settle_disputes(p_order_id bigint) returns jsonb
  language sql
  set search_path = public, pg_temp
  as $$ select public.stripe_settle_order(p_order_id) $$;

-- `charge.refunded` (cumulative: p_amount_refunded is the total refunded so far): the
-- refund is recorded (kept for an order that is not there or not credited yet, and
-- settled when it is), then the order, if credited, is settled to its target.
-- Returns {"outcome":"applied"|"duplicate"|"no_order"|"not_completed", "taken",
-- "shortfall", "debt"}; "no_order" and "not_completed" keep the refund for later.
create or replace function public.stripe_apply_charge_refund(
  p_event_id text,
  p_type text,
  p_created bigint,
  p_charge_id text,
  p_payment_intent text,
  p_amount_captured bigint,
  p_amount_refunded bigint,
  p_fully_refunded boolean
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid;
  v_order public.stripe_orders;
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;

  select user_id into v_user from public.stripe_orders where payment_intent_id = p_payment_intent;
  if v_user is not null then
    perform 1 from public.user_profiles where id = v_user for update;
    select * into v_order from public.stripe_orders where payment_intent_id = p_payment_intent for update;
  end if;

  if p_charge_id is not null and p_payment_intent is not null then
    insert into public.stripe_refunds as r (charge_id, payment_intent_id, amount_captured, amount_refunded, fully_refunded)
    values (p_charge_id, p_payment_intent, p_amount_captured, greatest(0, coalesce(p_amount_refunded, 0)),
            coalesce(p_fully_refunded, false))
    on conflict (charge_id) do update set
      amount_captured = coalesce(excluded.amount_captured, r.amount_captured),
      amount_refunded = greatest(r.amount_refunded, excluded.amount_refunded),
      fully_refunded = r.fully_refunded or excluded.fully_refunded,
      updated_at = now();
  end if;

  if v_user is null then
    -- Not a token order (a subscription invoice's charge), or its checkout is not
    -- applied yet: kept, and settled by the checkout when it credits the order.
    return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', 'no_order'));
  end if;
  if v_order.status not in ('completed', 'refunded') then
    return public.stripe_finish_event(p_event_id, jsonb_build_object('outcome', 'not_completed'));
  end if;
  return public.stripe_finish_event(p_event_id,
    jsonb_build_object('outcome', 'applied') || public.stripe_settle_order(v_order.id)
      || jsonb_build_object('order_status', (select status from public.stripe_orders where id = v_order.id)));
end
$$;

-- Debits a user for a feature, once per reference. A debt is paid from the balance
-- first; while one remains, nothing is debited.
--
-- Returns
--   {"ok":true,  "replayed":false, "cost":c, "balance":b, "reference":r}  debited now
--   {"ok":true,  "replayed":true,  "cost":c, "balance":b, "reference":r}  debited by an
--       earlier call with this reference (b = the balance right after that debit)
--   {"ok":false, "reason":"insufficient_tokens", "cost":c, "balance":b}   nothing written
--   {"ok":false, "reason":"account_in_debt", "cost":c, "balance":b, "debt":d}  a refund
--       or lost dispute left a debt of d tokens; nothing is debited until it is paid
--   {"ok":false, "reason":"reference_conflict",  "cost":c, "balance":b}   the reference
--       was used for another feature or amount (c = what it was used for)
--   {"ok":false, "reason":"already_refunded",    "cost":c, "balance":b}   the spend with
--       this reference was refunded: a new attempt needs a new reference
-- A refused spend records nothing (beyond paying debt), so the same reference may be
-- tried again later.
create or replace function public.spend_tokens_for(
  p_user uuid,
  p_feature text,
  p_units integer,
  p_reference text
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_cost integer := public.token_cost(p_feature, p_units);
  v_balance integer;
  v_debt integer;
  v_previous public.token_ledger;
begin
  if p_user is null or p_reference is null or char_length(p_reference) not between 1 and 200 then
    raise exception using errcode = '22023',
      message = 'spend_tokens_for needs a user and a reference of 1 to 200 characters';
  end if;

  select tokens into v_balance from public.user_profiles where id = p_user for update;
  if not found then
    -- No profile yet means no tokens; nothing to lock or write.
    return jsonb_build_object('ok', false, 'reason', 'insufficient_tokens', 'cost', v_cost, 'balance', 0);
  end if;

  select * into v_previous
    from public.token_ledger
   where user_id = p_user and reason = 'spend' and reference = p_reference;
  if found then
    if v_previous.feature <> p_feature or -v_previous.delta <> v_cost then
      return jsonb_build_object('ok', false, 'reason', 'reference_conflict',
                                'cost', -v_previous.delta, 'balance', v_balance);
    end if;
    if exists (select 1 from public.token_ledger
                where user_id = p_user and reason = 'spend_refund' and reference = p_reference) then
      return jsonb_build_object('ok', false, 'reason', 'already_refunded', 'cost', v_cost, 'balance', v_balance);
    end if;
    return jsonb_build_object('ok', true, 'replayed', true, 'cost', v_cost,
                              'balance', v_previous.balance_after, 'reference', p_reference);
  end if;

  if public.token_debt_pay(p_user) > 0 then
    select tokens into v_balance from public.user_profiles where id = p_user;
  end if;
  select amount into v_debt from public.token_debts where user_id = p_user;
  if coalesce(v_debt, 0) > 0 then
    return jsonb_build_object('ok', false, 'reason', 'account_in_debt', 'cost', v_cost, 'balance', v_balance,
                              'debt', v_debt);
  end if;

  if v_balance < v_cost then
    return jsonb_build_object('ok', false, 'reason', 'insufficient_tokens', 'cost', v_cost, 'balance', v_balance);
  end if;

  update public.user_profiles set tokens = tokens - v_cost where id = p_user
    returning tokens into v_balance;
  insert into public.token_ledger (user_id, delta, reason, feature, reference, balance_after)
  values (p_user, -v_cost, 'spend', p_feature, p_reference, v_balance);
  return jsonb_build_object('ok', true, 'replayed', false, 'cost', v_cost,
                            'balance', v_balance, 'reference', p_reference);
end
$$;

revoke all on function public.token_ledger_free_reference(uuid, text, text) from public, anon, authenticated, service_role;
revoke all on function public.token_debt_pay(uuid) from public, anon, authenticated, service_role;
revoke all on function public.stripe_credit_purchase(uuid, integer, text) from public, anon, authenticated, service_role;
revoke all on function public.stripe_settle_order(bigint) from public, anon, authenticated, service_role;
revoke all on function public.stripe_settle_disputes(bigint) from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_charge_refund(text, text, bigint, text, text, bigint, bigint, boolean)
  from public, anon, authenticated, service_role;
revoke all on function public.spend_tokens_for(uuid, text, integer, text) from public, anon, authenticated, service_role;
grant execute on function public.stripe_apply_charge_refund(text, text, bigint, text, text, bigint, bigint, boolean) to service_role;
grant execute on function public.spend_tokens_for(uuid, text, integer, text) to service_role;
