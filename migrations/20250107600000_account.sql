-- A user's account: the export of everything the server holds about them, and its
-- deletion.
--
-- Deleting a user deletes their personal data and keeps the financial records the
-- operator must retain (token orders, subscriptions, and the ledger rows that record
-- money: purchases, refunds and dispute reversals), detached from the person: their
-- user_id becomes null. Whatever deletes the user (account_delete, or an auth user
-- deleted by hand in the dashboard) ends the same way, because the rule is on the
-- foreign keys and on a trigger of the profile, not in one caller.
--
-- Late Stripe events for a deleted user's customer find no user: the apply functions
-- record them with 'no_order', 'unknown_user' or 'unknown_customer' and the webhook
-- answers 200, without recreating anything.

------------------------------------------------------------------------------------------
-- Financial records outlive the user, detached
------------------------------------------------------------------------------------------

alter table public.stripe_orders alter column user_id drop not null;
alter table public.stripe_orders drop constraint stripe_orders_user_id_fkey;
alter table public.stripe_orders add constraint stripe_orders_user_id_fkey
  foreign key (user_id) references public.user_profiles (id) on delete set null;

alter table public.stripe_subscriptions alter column user_id drop not null;
alter table public.stripe_subscriptions drop constraint stripe_subscriptions_user_id_fkey;
alter table public.stripe_subscriptions add constraint stripe_subscriptions_user_id_fkey
  foreign key (user_id) references public.user_profiles (id) on delete set null;

alter table public.token_ledger alter column user_id drop not null;
alter table public.token_ledger drop constraint token_ledger_user_id_fkey;
alter table public.token_ledger add constraint token_ledger_user_id_fkey
  foreign key (user_id) references public.user_profiles (id) on delete set null;

-- The ledger reasons that record money moving through Stripe. Their rows are kept,
-- detached, when the user goes; the others (rewards and spends) are personal history.
create function public.ledger_reason_is_money(p_reason text) returns boolean
  language sql
  immutable
  as $$ select p_reason in ('purchase', 'refund', 'dispute_won') $$;

-- Before a profile is deleted: its non-money ledger rows go with it (the foreign keys
-- then detach what is kept, and cascade the rest).
create function public.account_before_profile_delete() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  delete from public.token_ledger l
   where l.user_id = old.id and not public.ledger_reason_is_money(l.reason);
  return old;
end
$$;

create trigger user_profiles_account_delete
  before delete on public.user_profiles
  for each row execute function public.account_before_profile_delete();

------------------------------------------------------------------------------------------
-- Export
------------------------------------------------------------------------------------------

-- Everything the server holds about p_user, as one document (format 1):
--   {"outcome": "ok", "format": 1, "user_id", "exported_at",
--    "tables": {"<table>": [rows as JSON objects], ...}}
-- or {"outcome": "unknown_user"}. "tables" names every table that has rows of a user
-- (every table with a user_id column, plus the auth user and the profile, keyed by id),
-- each table's rows whole; tests/tests/account.rs fails when a table with a user_id
-- column is missing here. Stripe disputes are listed for the user's orders. One
-- statement, one row; the caller has verified that p_user is the signed-in user (or is
-- the operator).
create function public.account_export(p_user uuid) returns jsonb
  language plpgsql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
begin
  if not exists (select 1 from auth.users where id = p_user)
     and not exists (select 1 from public.user_profiles where id = p_user) then
    return jsonb_build_object('outcome', 'unknown_user');
  end if;
  return jsonb_build_object(
    'outcome', 'ok',
    'format', 1,
    'user_id', p_user,
    'exported_at', now(),
    'tables', jsonb_build_object(
      'auth.users', coalesce((select jsonb_agg(to_jsonb(u)) from auth.users u where u.id = p_user), '[]'),
      'user_profiles', coalesce((select jsonb_agg(to_jsonb(p)) from public.user_profiles p where p.id = p_user), '[]'),
      'sessions', coalesce((select jsonb_agg(to_jsonb(s) order by s.completed_at, s.id)
                              from public.sessions s where s.user_id = p_user), '[]'),
      'user_achievements', coalesce((select jsonb_agg(to_jsonb(a) order by a.unlocked_at, a.achievement_id)
                                       from public.user_achievements a where a.user_id = p_user), '[]'),
      'custom_protocols', coalesce((select jsonb_agg(to_jsonb(c) order by c.created_at, c.id)
                                      from public.custom_protocols c where c.user_id = p_user), '[]'),
      'token_ledger', coalesce((select jsonb_agg(to_jsonb(l) order by l.id)
                                  from public.token_ledger l where l.user_id = p_user), '[]'),
      'stripe_customers', coalesce((select jsonb_agg(to_jsonb(c))
                                      from public.stripe_customers c where c.user_id = p_user), '[]'),
      'stripe_subscriptions', coalesce((select jsonb_agg(to_jsonb(s) order by s.created_at, s.subscription_id)
                                          from public.stripe_subscriptions s where s.user_id = p_user), '[]'),
      'stripe_orders', coalesce((select jsonb_agg(to_jsonb(o) order by o.id)
                                   from public.stripe_orders o where o.user_id = p_user), '[]'),
      'stripe_disputes', coalesce((select jsonb_agg(to_jsonb(d) order by d.created_at, d.dispute_id)
                                     from public.stripe_disputes d
                                    where d.payment_intent_id in (select o.payment_intent_id from public.stripe_orders o
                                                                   where o.user_id = p_user)), '[]'),
      'ai_usage', coalesce((select jsonb_agg(to_jsonb(a) order by a.window_start, a.endpoint)
                              from public.ai_usage a where a.user_id = p_user), '[]'),
      'premium_tts_usage', coalesce((select jsonb_agg(to_jsonb(t) order by t.period_start)
                                       from public.premium_tts_usage t where t.user_id = p_user), '[]'),
      'premium_tts_free_calls', coalesce((select jsonb_agg(to_jsonb(t) order by t.period_start, t.reference)
                                            from public.premium_tts_free_calls t where t.user_id = p_user), '[]'),
      'ai_meter_usage', coalesce((select jsonb_agg(to_jsonb(m)) from public.ai_meter_usage m where m.user_id = p_user), '[]'),
      'reward_days', coalesce((select jsonb_agg(to_jsonb(d) order by d.day)
                                 from public.reward_days d where d.user_id = p_user), '[]'),
      'stripe_checkout_sessions', coalesce((select jsonb_agg(to_jsonb(c) order by c.created_at, c.session_id)
                                              from public.stripe_checkout_sessions c where c.user_id = p_user), '[]'),
      'token_debts', coalesce((select jsonb_agg(to_jsonb(t)) from public.token_debts t where t.user_id = p_user), '[]'),
      'stripe_refunds', coalesce((select jsonb_agg(to_jsonb(r) order by r.created_at, r.charge_id)
                                    from public.stripe_refunds r
                                   where r.payment_intent_id in (select o.payment_intent_id from public.stripe_orders o
                                                                  where o.user_id = p_user)), '[]'),
      -- The browsers' push keys are credentials of the user's devices: named, not copied.
      'push_subscriptions', coalesce((select jsonb_agg(jsonb_build_object('id', s.id, 'user_id', s.user_id, 'endpoint_origin',
                                                substring(s.endpoint from '^[a-z]+://[^/]+'),
                                                'created_at', s.created_at, 'last_sent_at', s.last_sent_at)
                                              order by s.created_at)
                                        from public.push_subscriptions s where s.user_id = p_user), '[]')
    )
  );
end
$$;

------------------------------------------------------------------------------------------
-- Delete
------------------------------------------------------------------------------------------

-- The Stripe customers that bill p_user (their mapping, and any named by their
-- subscriptions and orders), for the caller to cancel and delete in Stripe before
-- account_delete. Returns {"customers": ["cus_...", ...]}, sorted.
create function public.account_stripe_customers(p_user uuid) returns jsonb
  language sql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
  select jsonb_build_object('customers', coalesce(jsonb_agg(distinct c.customer_id order by c.customer_id), '[]'))
    from (
      select customer_id from public.stripe_customers where user_id = p_user
      union select customer_id from public.stripe_subscriptions where user_id = p_user
      union select customer_id from public.stripe_orders where user_id = p_user
    ) c
   where c.customer_id is not null
$$;

-- Deletes p_user in one transaction: the auth user (so the account cannot sign in or be
-- recreated by a later request), the profile and every personal row with it (the
-- foreign keys cascade), keeping the financial records detached (see the top of this
-- file). Takes the profile's row lock first, like every writer of a user's rows, so a
-- session completion or a payment either finished before or finds no user after.
-- Idempotent: a user already gone answers the same. Returns {"deleted": true}.
create function public.account_delete(p_user uuid) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  perform 1 from public.user_profiles where id = p_user for update;
  delete from auth.users where id = p_user;
  -- A profile whose auth user was already gone.
  delete from public.user_profiles where id = p_user;
  return jsonb_build_object('deleted', true);
end
$$;

revoke all on function public.ledger_reason_is_money(text) from public, anon, authenticated, service_role;
revoke all on function public.account_before_profile_delete() from public, anon, authenticated, service_role;
revoke all on function public.account_export(uuid) from public, anon, authenticated, service_role;
revoke all on function public.account_stripe_customers(uuid) from public, anon, authenticated, service_role;
revoke all on function public.account_delete(uuid) from public, anon, authenticated, service_role;
grant execute on function public.account_export(uuid) to service_role;
grant execute on function public.account_stripe_customers(uuid) to service_role;
grant execute on function public.account_delete(uuid) to service_role;
