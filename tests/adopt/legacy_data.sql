-- Fills the as-is database of legacy_schema.sql with the users of a live app, the same
-- rows every time: each value is a hash of the row's number, not random(), so a test can
-- name a user and know what it holds. `set libero.fixture_users = 'N'` before running
-- it picks the number of users (default 3000).
--
-- Besides ordinary rows it holds what a database written by old clients collects, each
-- kind every so often (the modulus is the user number):
--   tokens negative (97), null (211), absurdly high (331); experience negative (173);
--   level 0 (311); streak negative (199); ego_state_usage null (89) or not an object
--   (179); settings null (151); display names over 100 characters (263);
--   sessions: duration null, negative or over a day, ego state null, negative XP, a
--   protocol since deleted; protocols with an empty name or a duration out of range;
--   subscriptions in every state, with the template's 'not_started' placeholders;
--   orders: completed, pending and canceled, an amount that is no package (every 41st
--   customer's), a completed order stored twice (the template inserts one per webhook
--   delivery; every 17th customer's), and an order whose customer is unknown.

create function pg_temp.r(n bigint, salt text) returns bigint
  language sql immutable
  as $$ select ('x' || substr(md5(n::text || ':' || salt), 1, 8))::bit(32)::bigint $$;

create function pg_temp.uid(n bigint, salt text) returns uuid
  language sql immutable
  as $$ select md5('libero-fixture:' || salt || ':' || n)::uuid $$;

create temp table fixture_n as
select coalesce(nullif(current_setting('libero.fixture_users', true), '')::int, 3000) as users,
       timestamptz '2026-01-01 00:00:00+00' as epoch;

-- Sign-ups create their profile through the app's trigger (as in production); the
-- profiles are then overwritten with each user's progress below.
insert into auth.users (id, email, raw_user_meta_data, created_at)
select pg_temp.uid(i, 'user'), format('user%s@example.com', i), '{}'::jsonb,
       (select epoch from fixture_n) - make_interval(days => 30 + (pg_temp.r(i, 'age') % 400)::int)
  from generate_series(1, (select users from fixture_n)) i;

update public.user_profiles p set
  display_name = case when i % 263 = 0 then repeat('Very long name ', 14) else format('User %s', i) end,
  experience = case when i % 173 = 0 then -50 else (pg_temp.r(i, 'xp') % 6000)::int end,
  level = case when i % 311 = 0 then 0 else 1 + (pg_temp.r(i, 'xp') % 6000)::int / 100 end,
  tokens = case
    when i % 97 = 0 then -((pg_temp.r(i, 'neg') % 40)::int + 1)
    when i % 211 = 0 then null
    when i % 331 = 0 then 2000000
    else (pg_temp.r(i, 'tokens') % 800)::int end,
  session_streak = case when i % 199 = 0 then -3 else (pg_temp.r(i, 'streak') % 40)::int end,
  last_session_date = date '2026-01-01' - (pg_temp.r(i, 'last') % 60)::int,
  ego_state_usage = case
    when i % 89 = 0 then null
    when i % 179 = 0 then '"guardian"'::jsonb
    else jsonb_build_object('guardian', pg_temp.r(i, 'g') % 30, 'explorer', pg_temp.r(i, 'e') % 20) end,
  active_ego_state = (array['guardian', 'explorer', 'healer', 'rebel', 'sage'])[1 + (pg_temp.r(i, 'active') % 5)::int],
  onboarding_completed = case when i % 7 = 0 then null else pg_temp.r(i, 'onb') % 4 <> 0 end,
  journey_goals = jsonb_build_array('sleep', 'focus'),
  settings = case when i % 151 = 0 then null
                  else jsonb_build_object('timezone', (array['Europe/Paris', 'America/New_York', 'UTC', 'Asia/Tokyo'])[1 + (i % 4)]) end,
  created_at = u.created_at,
  updated_at = u.created_at + interval '1 day'
  from (select i, pg_temp.uid(i, 'user') as id from generate_series(1, (select users from fixture_n)) i) n
  join auth.users u on u.id = n.id
 where p.id = n.id;

-- Protocols: 0 to 2 per user.
insert into public.custom_protocols (id, user_id, name, description, induction, deepener, duration, ego_state, created_at)
select pg_temp.uid(i * 10 + k, 'protocol'), pg_temp.uid(i, 'user'),
       case when (i + k) % 53 = 0 then '' else format('Protocol %s.%s', i, k) end,
       'A calm evening protocol', 'Close your eyes.', 'Deeper now.',
       case when (i + k) % 61 = 0 then 0 when (i + k) % 67 = 0 then 999 else 5 + (pg_temp.r(i * 10 + k, 'pd') % 40)::int end,
       'guardian',
       (select epoch from fixture_n) - make_interval(days => (pg_temp.r(i * 10 + k, 'pc') % 30)::int)
  from generate_series(1, (select users from fixture_n)) i
  cross join generate_series(1, 2) k
 where k <= pg_temp.r(i, 'protocols') % 3;

-- Sessions: 0 to 8 per user, some naming a protocol (every 59th one since deleted).
insert into public.sessions (id, user_id, protocol_id, ego_state, action, duration, experience_gained, completed_at, created_at)
select pg_temp.uid(i * 100 + k, 'session'), pg_temp.uid(i, 'user'),
       case when k = 1 and (i % 59 = 0 or pg_temp.r(i, 'protocols') % 3 > 0) then pg_temp.uid(i * 10 + 1, 'protocol') end,
       case when (i + k) % 71 = 0 then null else (array['guardian', 'explorer', 'healer'])[1 + (k % 3)] end,
       'complete',
       case when (i + k) % 83 = 0 then null
            when (i + k) % 101 = 0 then -60
            when (i + k) % 103 = 0 then 500000
            else 60 * (5 + (pg_temp.r(i * 100 + k, 'sd') % 40)::int) end,
       case when (i + k) % 107 = 0 then -10 else 10 + (pg_temp.r(i * 100 + k, 'sx') % 80)::int end,
       (select epoch from fixture_n) - make_interval(days => k * 2, secs => (pg_temp.r(i * 100 + k, 'st') % 86400)::int),
       (select epoch from fixture_n) - make_interval(days => k * 2)
  from generate_series(1, (select users from fixture_n)) i
  cross join generate_series(1, 8) k
 where k <= pg_temp.r(i, 'sessions') % 9;
delete from public.custom_protocols p using generate_series(59, (select users from fixture_n), 59) i
 where p.id = pg_temp.uid(i * 10 + 1, 'protocol');

-- Stripe: a customer for every third user (every 23rd of them deleted in Stripe).
insert into public.stripe_customers (user_id, customer_id, created_at, deleted_at)
select pg_temp.uid(i, 'user'), format('cus_fixture%s', i),
       (select epoch from fixture_n) - make_interval(days => 20 + (pg_temp.r(i, 'cc') % 200)::int),
       case when i % 69 = 0 then (select epoch from fixture_n) - interval '3 days' end
  from generate_series(3, (select users from fixture_n), 3) i;

-- One subscription row per customer, as the template keeps it.
insert into public.stripe_subscriptions (customer_id, subscription_id, price_id, current_period_start,
                                         current_period_end, cancel_at_period_end, payment_method_brand,
                                         payment_method_last4, status, created_at, updated_at)
select format('cus_fixture%s', i),
       case when s = 'not_started' then null else format('sub_fixture%s', i) end,
       case when s = 'not_started' then null else 'price_legacy_mystic' end,
       case when s = 'not_started' then null else extract(epoch from (select epoch from fixture_n) - interval '10 days')::bigint end,
       case when s = 'not_started' then null else extract(epoch from (select epoch from fixture_n) + interval '20 days')::bigint end,
       s = 'active' and i % 5 = 0, 'visa', '4242', s::public.stripe_subscription_status,
       (select epoch from fixture_n) - interval '40 days', (select epoch from fixture_n) - interval '10 days'
  from (select i, (array['not_started', 'active', 'active', 'trialing', 'canceled', 'past_due', 'incomplete',
                         'unpaid', 'active'])[1 + (pg_temp.r(i, 'sub') % 9)::int] as s
          from generate_series(3, (select users from fixture_n), 3) i) x;

-- Token orders: every other customer, 1 to 3 each.
insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, amount_subtotal,
                                  amount_total, currency, payment_status, status, created_at)
select format('cs_fixture_%s_%s', i, k), format('pi_fixture_%s_%s', i, k), format('cus_fixture%s', i),
       amount, amount, 'usd',
       case when st = 'completed' then 'paid' else 'unpaid' end,
       st::public.stripe_order_status,
       (select epoch from fixture_n) - make_interval(days => 1 + k * 3)
  from (select i, k,
               case when i % 41 = 0 and k = 1 then 1234
                    else (array[499, 999, 1999])[1 + (pg_temp.r(i * 10 + k, 'pkg') % 3)::int] end as amount,
               (array['completed', 'completed', 'completed', 'completed', 'pending', 'canceled'])
                 [1 + (pg_temp.r(i * 10 + k, 'ost') % 6)::int] as st
          from generate_series(6, (select users from fixture_n), 6) i
          cross join generate_series(1, 3) k
         where k <= 1 + pg_temp.r(i, 'orders') % 3) o;

-- A webhook delivered twice wrote the same completed order twice.
insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, amount_subtotal,
                                  amount_total, currency, payment_status, status, created_at)
select checkout_session_id, payment_intent_id, customer_id, amount_subtotal, amount_total, currency,
       payment_status, status, created_at + interval '2 seconds'
  from public.stripe_orders
 where status = 'completed' and substring(customer_id from 12)::int % 17 = 0
 order by id;

-- A paid order whose customer row was lost.
insert into public.stripe_orders (checkout_session_id, payment_intent_id, customer_id, amount_subtotal,
                                  amount_total, currency, payment_status, status, created_at)
values ('cs_fixture_lost', 'pi_fixture_lost', 'cus_fixture_unknown', 499, 499, 'usd', 'paid', 'completed',
        (select epoch from fixture_n) - interval '5 days');

drop table fixture_n;
