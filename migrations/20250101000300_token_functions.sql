-- Spending tokens: prices, debits, refunds, paid custom protocols, and the ledger check.
--
-- Every function that changes a user's tokens starts by locking that user's profile row
-- (SELECT ... FOR UPDATE). Changes for one user therefore run one after another, and
-- each statement after the lock sees everything committed before it, which is what makes
-- the "is this reference already in the ledger?" checks below race-free. Each function
-- is one statement for its caller, so it either happens completely or not at all.
--
-- Outcomes the caller must handle (not enough tokens, a reused reference) are returned
-- as JSON; arguments that cannot be right (unknown feature, no reference) raise
-- SQLSTATE 22023, and a missing sign-in raises 42501 (PostgREST answers 401/403).

-- The price in tokens of `p_units` of a feature: uses for a per-use feature, characters
-- for one priced per block of `unit_chars` characters (every started block is charged).
create function public.token_cost(p_feature text, p_units integer default 1) returns integer
  language plpgsql
  stable
  set search_path = public, pg_temp
  as $$
declare
  price public.token_prices;
begin
  select * into price from public.token_prices where feature = p_feature;
  if not found then
    raise exception using errcode = '22023', message = format('unknown priced feature %L', p_feature);
  end if;
  if p_units is null or p_units < 1 then
    raise exception using errcode = '22023', message = format('units must be at least 1, not %s', p_units);
  end if;
  if price.unit_chars is null then
    return (price.tokens::bigint * p_units)::integer;
  end if;
  return (price.tokens::bigint * ((p_units::bigint + price.unit_chars - 1) / price.unit_chars))::integer;
end
$$;


-- The signed-in user's own spend (PostgREST: rpc('spend_tokens', {p_feature, p_units,
-- p_reference})). Same results as spend_tokens_for. The reference is stored as
-- 'client:<p_reference>' so a user can never occupy a reference the server will use;
-- without one, the spend is not idempotent (a fresh reference is generated).
create function public.spend_tokens(
  p_feature text,
  p_units integer default 1,
  p_reference text default null
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid := auth.uid();
begin
  if v_user is null then
    raise exception using errcode = '42501', message = 'spend_tokens needs a signed-in user';
  end if;
  if char_length(p_reference) > 100 then
    raise exception using errcode = '22023', message = 'p_reference is longer than 100 characters';
  end if;
  return public.spend_tokens_for(
    v_user, p_feature, p_units,
    'client:' || coalesce(nullif(p_reference, ''), gen_random_uuid()::text)
  );
end
$$;

-- Gives back a spend (the server calls this when the paid upstream call failed), once.
--
-- Returns
--   {"ok":true,  "replayed":false, "refunded":c, "balance":b}  refunded now
--   {"ok":true,  "replayed":true,  "refunded":c, "balance":b}  refunded earlier
--       (b = the balance right after that refund)
--   {"ok":false, "reason":"no_such_spend"}                     nothing to refund
create function public.refund_spend(p_user uuid, p_reference text) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_balance integer;
  v_spend public.token_ledger;
  v_refund public.token_ledger;
begin
  perform 1 from public.user_profiles where id = p_user for update;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'no_such_spend');
  end if;

  select * into v_spend
    from public.token_ledger
   where user_id = p_user and reason = 'spend' and reference = p_reference;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'no_such_spend');
  end if;

  select * into v_refund
    from public.token_ledger
   where user_id = p_user and reason = 'spend_refund' and reference = p_reference;
  if found then
    return jsonb_build_object('ok', true, 'replayed', true, 'refunded', v_refund.delta,
                              'balance', v_refund.balance_after);
  end if;

  update public.user_profiles set tokens = tokens - v_spend.delta where id = p_user
    returning tokens into v_balance;
  insert into public.token_ledger (user_id, delta, reason, feature, reference, balance_after)
  values (p_user, -v_spend.delta, 'spend_refund', v_spend.feature, p_reference, v_balance);
  return jsonb_build_object('ok', true, 'replayed', false, 'refunded', -v_spend.delta, 'balance', v_balance);
end
$$;

-- Creates a custom protocol for the signed-in user and charges for it (price
-- 'custom_protocol'), in one step: either both happen or neither.
--
-- `p_id` makes the call idempotent: a client that passes the new protocol's id can
-- retry safely; the retry returns the protocol created the first time and charges
-- nothing. Without it, every call creates (and charges for) a new protocol.
--
-- Returns
--   {"ok":true, "replayed":false|true, "cost":c, "balance":b, "protocol":{...the row...}}
--   {"ok":false, "reason":"insufficient_tokens", "cost":c, "balance":b}
--   {"ok":false, "reason":"protocol_id_used"}  this id was paid for and that protocol has
--       since been deleted (a deleted protocol is not re-created for free)
-- Invalid fields (an empty name, an over-long text) raise the table's check violation
-- (SQLSTATE 23514) and charge nothing.
create function public.create_custom_protocol(
  p_name text,
  p_description text default null,
  p_induction text default null,
  p_deepener text default null,
  p_duration integer default null,
  p_ego_state text default null,
  p_id uuid default null
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_user uuid := auth.uid();
  v_id uuid := coalesce(p_id, gen_random_uuid());
  v_spend jsonb;
  v_protocol public.custom_protocols;
begin
  if v_user is null then
    raise exception using errcode = '42501', message = 'create_custom_protocol needs a signed-in user';
  end if;

  -- The spend locks the profile, so a concurrent retry with the same id waits here and
  -- then sees this call's protocol and ledger row.
  v_spend := public.spend_tokens_for(v_user, 'custom_protocol', 1, 'protocol:' || v_id);
  if not (v_spend ->> 'ok')::boolean then
    return v_spend;
  end if;

  if (v_spend ->> 'replayed')::boolean then
    select * into v_protocol from public.custom_protocols where id = v_id and user_id = v_user;
    if not found then
      return jsonb_build_object('ok', false, 'reason', 'protocol_id_used');
    end if;
  else
    -- An id taken by another user's protocol fails here (unique violation, 23505), which
    -- undoes the debit above.
    insert into public.custom_protocols (id, user_id, name, description, induction, deepener, duration, ego_state)
    values (v_id, v_user, p_name, p_description, p_induction, p_deepener, p_duration, p_ego_state)
    returning * into v_protocol;
  end if;

  return v_spend - 'reference' || jsonb_build_object('protocol', to_jsonb(v_protocol));
end
$$;

-- Users whose balance disagrees with their ledger: tokens <> sum(delta), or tokens <>
-- the balance_after of their latest row. Always empty while the triggers on the ledger
-- hold; tests and operators check it. Only the server may read it; security_invoker so
-- it reads with the caller's rights, like every other view here.
create view public.ledger_mismatches
  with (security_invoker = true)
  as
select
  p.id as user_id,
  p.tokens,
  coalesce(l.ledger_sum, 0) as ledger_sum,
  l.latest_balance
from public.user_profiles p
left join lateral (
  select
    sum(t.delta)::bigint as ledger_sum,
    (select t2.balance_after
       from public.token_ledger t2
      where t2.user_id = p.id
      order by t2.id desc
      limit 1) as latest_balance
  from public.token_ledger t
  where t.user_id = p.id
) l on true
where p.tokens <> coalesce(l.ledger_sum, 0)
   or p.tokens <> coalesce(l.latest_balance, 0);

revoke all on table public.ledger_mismatches from anon, authenticated, service_role;
grant select on table public.ledger_mismatches to service_role;

revoke all on function public.token_cost(text, integer) from public, anon, authenticated, service_role;
revoke all on function public.spend_tokens(text, integer, text) from public, anon, authenticated, service_role;
revoke all on function public.refund_spend(uuid, text) from public, anon, authenticated, service_role;
revoke all on function public.create_custom_protocol(text, text, text, text, integer, text, uuid)
  from public, anon, authenticated, service_role;

grant execute on function public.token_cost(text, integer) to authenticated, service_role;
grant execute on function public.spend_tokens(text, integer, text) to authenticated;
grant execute on function public.create_custom_protocol(text, text, text, text, integer, text, uuid) to authenticated;
grant execute on function public.refund_spend(uuid, text) to service_role;
