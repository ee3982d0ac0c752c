-- Operator analytics: the service's figures per day, as views only the server
-- (service_role) may read, never `authenticated` or `anon`. `libero analytics` prints
-- them. Days are UTC days.
--
--   analytics_active_users     dau, wau, mau (users with a recorded session)
--   analytics_sessions_daily   sessions (rewarded and not), minutes, users
--   analytics_revenue_daily    per product and currency: orders, tokens sold, revenue; refunds
--   analytics_tokens_daily     tokens granted and spent, by source and sink
--   analytics_ai_daily         AI and voice calls per endpoint (the hourly quota's counts)
--   analytics_tts_daily        tts requests, cache hits and misses, hit rate; premium voice calls
--   analytics_plan_mix         users per plan now, and subscriptions per status
--   analytics_subscriptions_daily  subscriptions started and ended, active, churn rate
--
-- Most figures are read from the tables the service already keeps. Four things were not
-- kept anywhere, so this migration starts keeping them, from now on (no history before):
-- * AI calls per day: ai_usage is pruned to the last day per user. A trigger adds each
--   change of an ai_usage count to analytics_daily_counts.
-- * tts cache hits: tts_cache_get marks a hit by moving last_hit_at. A trigger counts
--   those. (A miss is a tts request that went on to the hourly quota: the `tts` AI calls.)
-- * refunds per order: stripe_orders keeps only the running totals. A trigger records each
--   increase or decrease of an order's reversed tokens in analytics_order_reversals.
-- * subscription starts and ends: stripe_subscriptions keeps only the current status. A
--   trigger records each change between live (active, trialing) and not.
-- The triggers are written so they cannot slow the paths they sit on: the counters are
-- split over 8 rows per day and metric (by user or cache key), so concurrent requests of
-- different users rarely wait on the same row.

------------------------------------------------------------------------------------------
-- What was not kept: counters and change records
------------------------------------------------------------------------------------------

create table public.analytics_daily_counts (
  day date not null,
  metric text not null check (metric in ('ai_calls', 'tts_cache_hits')),
  -- The endpoint for ai_calls; '' otherwise.
  dimension text not null default '' check (char_length(dimension) <= 64),
  shard smallint not null check (shard between 0 and 7),
  value bigint not null default 0,
  primary key (day, metric, dimension, shard)
);

create function public.analytics_count(p_day date, p_metric text, p_dimension text, p_shard integer, p_delta bigint)
  returns void
  language sql
  security definer
  set search_path = public, pg_temp
  as $$
  insert into public.analytics_daily_counts as c (day, metric, dimension, shard, value)
  values (p_day, p_metric, p_dimension, p_shard & 7, p_delta)
  on conflict (day, metric, dimension, shard) do update set value = c.value + excluded.value
$$;

-- ai_usage rows count calls per user, endpoint and hour (ai_quota_take); a refused
-- premium call gives its count back (a decrease). Deletions are pruning, not calls.
create function public.analytics_on_ai_usage() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_delta integer := new.count - case when tg_op = 'UPDATE' then old.count else 0 end;
begin
  if v_delta <> 0 then
    perform public.analytics_count((new.window_start at time zone 'UTC')::date, 'ai_calls', new.endpoint,
                                   hashtext(new.user_id::text), v_delta);
  end if;
  return null;
end
$$;

create trigger ai_usage_analytics
  after insert or update of count on public.ai_usage
  for each row execute function public.analytics_on_ai_usage();

-- A hit (tts_cache_get) sets last_hit_at and nothing else; a store over an entry sets
-- created_at too.
create function public.analytics_on_tts_cache_hit() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  if new.created_at = old.created_at then
    perform public.analytics_count((new.last_hit_at at time zone 'UTC')::date, 'tts_cache_hits', '',
                                   hashtext(new.cache_key), 1);
  end if;
  return null;
end
$$;

create trigger tts_cache_analytics
  after update of last_hit_at on public.tts_cache
  for each row execute function public.analytics_on_tts_cache_hit();

-- Each change of the tokens an order gave back (refunds, disputes; a won dispute is a
-- negative change), counting what was taken and what the user had already spent.
create table public.analytics_order_reversals (
  id bigint generated always as identity primary key,
  order_id bigint not null references public.stripe_orders (id) on delete cascade,
  at timestamptz not null default now(),
  tokens integer not null check (tokens <> 0)
);

create function public.analytics_on_order_reversal() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_delta integer := (new.tokens_reversed + new.refund_shortfall) - (old.tokens_reversed + old.refund_shortfall);
begin
  if v_delta <> 0 then
    insert into public.analytics_order_reversals (order_id, tokens) values (new.id, v_delta);
  end if;
  return null;
end
$$;

create trigger stripe_orders_analytics
  after update of tokens_reversed, refund_shortfall on public.stripe_orders
  for each row execute function public.analytics_on_order_reversal();

-- Each time a subscription becomes live (active or trialing) or stops being live.
create table public.analytics_subscription_changes (
  id bigint generated always as identity primary key,
  subscription_id text not null,
  at timestamptz not null default now(),
  started boolean not null
);

create function public.analytics_on_subscription() returns trigger
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_was boolean := tg_op = 'UPDATE' and old.status in ('active', 'trialing');
  v_is boolean := new.status in ('active', 'trialing');
begin
  if v_was <> v_is then
    insert into public.analytics_subscription_changes (subscription_id, started) values (new.subscription_id, v_is);
  end if;
  return null;
end
$$;

create trigger stripe_subscriptions_analytics
  after insert or update of status on public.stripe_subscriptions
  for each row execute function public.analytics_on_subscription();

-- Subscriptions live now started before these records: count them as started when their
-- row was made, so the active count is right from the start.
insert into public.analytics_subscription_changes (subscription_id, at, started)
select subscription_id, created_at, true from public.stripe_subscriptions where status in ('active', 'trialing');

------------------------------------------------------------------------------------------
-- The views
------------------------------------------------------------------------------------------

-- Daily, weekly and monthly active users: distinct users with a recorded session that UTC
-- day, in the 7 days, in the 30 days ending that day. Each user-day opens a window of 7
-- (30) days that the user's next active day cuts short, so the windows of one user never
-- overlap and the active users of a day are the windows open on it: one pass and a
-- running sum, not a distinct count per day.
create view public.analytics_active_users
  with (security_invoker = true)
  as
with user_days as (
  select distinct s.user_id, (s.ended_at at time zone 'UTC')::date as day
    from public.sessions s
), spans as (
  select day, lead(day) over (partition by user_id order by day) as next_day from user_days
), changes as (
  select day, 1 as dau, 1 as wau, 1 as mau from spans
  union all
  select day + 1, -1, 0, 0 from spans
  union all
  select least(day + 7, coalesce(next_day, day + 7)), 0, -1, 0 from spans
  union all
  select least(day + 30, coalesce(next_day, day + 30)), 0, 0, -1 from spans
), per_day as (
  select day, sum(dau) as dau, sum(wau) as wau, sum(mau) as mau from changes group by day
), calendar as (
  select d::date as day
    from generate_series((select min(day) from user_days), current_date, interval '1 day') as d
)
select c.day,
       sum(coalesce(p.dau, 0)) over w as dau,
       sum(coalesce(p.wau, 0)) over w as wau,
       sum(coalesce(p.mau, 0)) over w as mau
  from calendar c
  left join per_day p on p.day = c.day
window w as (order by c.day);

create view public.analytics_sessions_daily
  with (security_invoker = true)
  as
select (s.ended_at at time zone 'UTC')::date as day,
       count(*) as sessions,
       count(*) filter (where s.rewarded) as rewarded_sessions,
       round(sum(s.duration) filter (where s.rewarded) / 60.0, 1) as minutes,
       count(distinct s.user_id) as users
  from public.sessions s
 group by 1;

-- Token packages: orders credited (completed or later refunded) on the day they were
-- recorded, their tokens and what was paid (amount_total, in the currency's smallest
-- unit); refunds on the day they were applied: the tokens taken back (or owed: spent
-- already) and the matching share of what was paid. Subscriptions are not here (their
-- invoices are not kept): see analytics_subscriptions_daily.
create view public.analytics_revenue_daily
  with (security_invoker = true)
  as
with sales as (
  select (o.created_at at time zone 'UTC')::date as day, o.product, coalesce(o.currency, '') as currency,
         count(*) as orders, sum(o.tokens) as tokens_sold, coalesce(sum(o.amount_total), 0) as revenue
    from public.stripe_orders o
   where o.status in ('completed', 'refunded')
   group by 1, 2, 3
), refunds as (
  select (r.at at time zone 'UTC')::date as day, o.product, coalesce(o.currency, '') as currency,
         count(*) filter (where r.tokens > 0) as refunds,
         sum(r.tokens) as tokens_refunded,
         coalesce(sum(case when o.tokens > 0 then round(o.amount_total::numeric * r.tokens / o.tokens) end), 0)
           as refunded
    from public.analytics_order_reversals r
    join public.stripe_orders o on o.id = r.order_id
   group by 1, 2, 3
)
select coalesce(s.day, r.day) as day,
       coalesce(s.product, r.product) as product,
       coalesce(s.currency, r.currency) as currency,
       coalesce(s.orders, 0) as orders,
       coalesce(s.tokens_sold, 0) as tokens_sold,
       coalesce(s.revenue, 0) as revenue,
       coalesce(r.refunds, 0) as refunds,
       coalesce(r.tokens_refunded, 0) as tokens_refunded,
       coalesce(r.refunded, 0) as refunded,
       coalesce(s.revenue, 0) - coalesce(r.refunded, 0) as net_revenue
  from sales s
  full join refunds r on r.day = s.day and r.product = s.product and r.currency = s.currency;

-- Sources (granted: session_complete, level_up, streak_bonus, purchase, spend_refund,
-- dispute_won) and sinks (spent: the priced feature of a spend, stripe_refund).
create view public.analytics_tokens_daily
  with (security_invoker = true)
  as
select (l.created_at at time zone 'UTC')::date as day,
       case when l.delta > 0 then 'granted' else 'spent' end as direction,
       case
         when l.reason = 'spend' then l.feature
         when l.reason = 'refund' then 'stripe_refund'
         else l.reason
       end as source,
       sum(abs(l.delta))::bigint as tokens,
       count(*) as entries,
       count(distinct l.user_id) as users
  from public.token_ledger l
 group by 1, 2, 3;

create view public.analytics_ai_daily
  with (security_invoker = true)
  as
select c.day, c.dimension as endpoint, sum(c.value)::bigint as calls
  from public.analytics_daily_counts c
 where c.metric = 'ai_calls'
 group by 1, 2;

-- A tts request is a cache hit, or a miss that went to the hourly quota (then upstream);
-- requests refused before the quota (bad input, no provider) are neither.
create view public.analytics_tts_daily
  with (security_invoker = true)
  as
with per_day as (
  select c.day,
         sum(c.value) filter (where c.metric = 'tts_cache_hits') as hits,
         sum(c.value) filter (where c.metric = 'ai_calls' and c.dimension = 'tts') as misses,
         sum(c.value) filter (where c.metric = 'ai_calls' and c.dimension = 'elevenlabs-tts-proxy') as premium
    from public.analytics_daily_counts c
   group by c.day
)
select day,
       (coalesce(hits, 0) + coalesce(misses, 0))::bigint as tts_requests,
       coalesce(hits, 0)::bigint as cache_hits,
       coalesce(misses, 0)::bigint as cache_misses,
       round(coalesce(hits, 0)::numeric / nullif(coalesce(hits, 0) + coalesce(misses, 0), 0), 3) as hit_rate,
       coalesce(premium, 0)::bigint as premium_calls
  from per_day;

-- Now: users per plan (kind 'plan'), and subscriptions per status (kind 'subscription').
create view public.analytics_plan_mix
  with (security_invoker = true)
  as
select 'plan' as kind, p.plan as name, count(*) as count,
       round(count(*)::numeric / sum(count(*)) over (), 3) as share
  from public.user_profiles p
 group by p.plan
union all
select 'subscription', s.status, count(*), round(count(*)::numeric / sum(count(*)) over (), 3)
  from public.stripe_subscriptions s
 group by s.status;

-- Per day since the first record: subscriptions that became live (started) and stopped
-- being live (ended), live at the end of the day, and churn: the share of the
-- subscriptions live at some time that day that ended (ended / (active + ended)).
create view public.analytics_subscriptions_daily
  with (security_invoker = true)
  as
with per_day as (
  select (c.at at time zone 'UTC')::date as day,
         count(*) filter (where c.started) as started,
         count(*) filter (where not c.started) as ended
    from public.analytics_subscription_changes c
   group by 1
), calendar as (
  select d::date as day
    from generate_series((select min(day) from per_day), current_date, interval '1 day') as d
), running as (
  select c.day, coalesce(p.started, 0) as started, coalesce(p.ended, 0) as ended,
         sum(coalesce(p.started, 0) - coalesce(p.ended, 0)) over (order by c.day) as active
    from calendar c
    left join per_day p on p.day = c.day
)
select day, started, ended, active,
       round(ended::numeric / nullif(active + ended, 0), 4) as churn_rate
  from running;

------------------------------------------------------------------------------------------
-- Indexes for the per-day scans (BRIN: a few pages, next to nothing per insert)
------------------------------------------------------------------------------------------

create index sessions_ended_at_brin on public.sessions using brin (ended_at);
create index token_ledger_created_at_brin on public.token_ledger using brin (created_at);

------------------------------------------------------------------------------------------
-- Privileges: the server only
------------------------------------------------------------------------------------------

alter table public.analytics_daily_counts enable row level security;
alter table public.analytics_order_reversals enable row level security;
alter table public.analytics_subscription_changes enable row level security;
revoke all on table public.analytics_daily_counts, public.analytics_order_reversals,
  public.analytics_subscription_changes
  from anon, authenticated, service_role;
revoke all on sequence public.analytics_order_reversals_id_seq, public.analytics_subscription_changes_id_seq
  from anon, authenticated, service_role;
grant select on table public.analytics_daily_counts, public.analytics_order_reversals,
  public.analytics_subscription_changes
  to service_role;

revoke all on table
  public.analytics_active_users, public.analytics_sessions_daily, public.analytics_revenue_daily,
  public.analytics_tokens_daily, public.analytics_ai_daily, public.analytics_tts_daily,
  public.analytics_plan_mix, public.analytics_subscriptions_daily
  from public, anon, authenticated, service_role;
grant select on table
  public.analytics_active_users, public.analytics_sessions_daily, public.analytics_revenue_daily,
  public.analytics_tokens_daily, public.analytics_ai_daily, public.analytics_tts_daily,
  public.analytics_plan_mix, public.analytics_subscriptions_daily
  to service_role;

revoke all on function public.analytics_count(date, text, text, integer, bigint) from public, anon, authenticated, service_role;
revoke all on function public.analytics_on_ai_usage() from public, anon, authenticated, service_role;
revoke all on function public.analytics_on_tts_cache_hit() from public, anon, authenticated, service_role;
revoke all on function public.analytics_on_order_reversal() from public, anon, authenticated, service_role;
revoke all on function public.analytics_on_subscription() from public, anon, authenticated, service_role;
