-- Stripe state, AI quotas and the text-to-speech cache: tables only. The functions that
-- apply Stripe events, count AI usage and use the cache come with their endpoints.
--
-- Stripe rows are written only by the server (service_role), from verified webhook
-- events and from its own API calls. Signed-in users read their own through the two
-- views at the end (the shape of the Supabase Stripe template).

------------------------------------------------------------------------------------------
-- Stripe
------------------------------------------------------------------------------------------

create table public.stripe_customers (
  user_id uuid primary key references public.user_profiles (id) on delete cascade,
  customer_id text not null unique,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- Set when Stripe reports the customer deleted; the row stays for the history.
  deleted_at timestamptz
);

create trigger stripe_customers_set_updated_at
  before update on public.stripe_customers
  for each row execute function public.set_updated_at();

create table public.stripe_subscriptions (
  subscription_id text primary key,
  customer_id text not null,
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  status text not null check (status in (
    'incomplete', 'incomplete_expired', 'trialing', 'active',
    'past_due', 'canceled', 'unpaid', 'paused'
  )),
  price_id text,
  current_period_start timestamptz,
  current_period_end timestamptz,
  cancel_at_period_end boolean not null default false,
  -- `created` of the Stripe event (or API read) this row reflects. Events arrive out of
  -- order: one older than this must not overwrite the row.
  stripe_updated_at timestamptz not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index stripe_subscriptions_customer_id_idx on public.stripe_subscriptions (customer_id);
create index stripe_subscriptions_user_id_idx on public.stripe_subscriptions (user_id);

create trigger stripe_subscriptions_set_updated_at
  before update on public.stripe_subscriptions
  for each row execute function public.set_updated_at();

-- One row per Checkout Session for a token package.
create table public.stripe_orders (
  id bigint generated always as identity primary key,
  checkout_session_id text not null unique,
  payment_intent_id text,
  customer_id text,
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  product text not null check (char_length(product) between 1 and 64),
  -- Tokens this order grants (package amount + bonus), fixed by the server when the
  -- checkout is created; never taken from the client.
  tokens integer not null check (tokens >= 0),
  -- Smallest currency unit, as Stripe reports it.
  amount_total bigint,
  currency text,
  payment_status text,
  status text not null default 'pending'
    check (status in ('pending', 'completed', 'failed', 'refunded')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index stripe_orders_user_id_created_at_idx on public.stripe_orders (user_id, created_at desc);
create index stripe_orders_payment_intent_id_idx on public.stripe_orders (payment_intent_id)
  where payment_intent_id is not null;

create trigger stripe_orders_set_updated_at
  before update on public.stripe_orders
  for each row execute function public.set_updated_at();

-- Every webhook event received, by Stripe's id: a redelivered event finds its row and is
-- not applied again.
create table public.stripe_events (
  event_id text primary key,
  type text not null,
  -- The event's own `created` (Stripe's clock).
  created timestamptz not null,
  received_at timestamptz not null default now(),
  -- What applying it did ('applied', 'ignored', 'stale', ...), for operators.
  outcome text
);

create view public.stripe_user_subscriptions
  with (security_invoker = true)
  as
select
  s.customer_id,
  s.subscription_id,
  s.status as subscription_status,
  s.price_id,
  s.current_period_start,
  s.current_period_end,
  s.cancel_at_period_end
from public.stripe_subscriptions s
where s.user_id = (select auth.uid());

create view public.stripe_user_orders
  with (security_invoker = true)
  as
select
  o.id as order_id,
  o.checkout_session_id,
  o.payment_intent_id,
  o.customer_id,
  o.product,
  o.tokens,
  o.amount_total,
  o.currency,
  o.payment_status,
  o.status as order_status,
  o.created_at as order_date
from public.stripe_orders o
where o.user_id = (select auth.uid());

------------------------------------------------------------------------------------------
-- AI usage quotas and the text-to-speech cache
------------------------------------------------------------------------------------------

-- Calls per user, endpoint and time window, for the hourly AI quotas.
create table public.ai_usage (
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  endpoint text not null check (char_length(endpoint) between 1 and 64),
  window_start timestamptz not null,
  count integer not null default 0 check (count >= 0),
  primary key (user_id, endpoint, window_start)
);

-- Synthesised speech by a key derived from (provider, voice, model, text), shared by all
-- users: no user data, so the server alone reads and writes it.
create table public.tts_cache (
  cache_key text primary key check (char_length(cache_key) between 1 and 200),
  provider text not null,
  content_type text not null,
  audio bytea not null,
  byte_size integer not null check (byte_size >= 0),
  created_at timestamptz not null default now(),
  last_hit_at timestamptz not null default now()
);

-- Eviction drops the least recently used entries.
create index tts_cache_last_hit_at_idx on public.tts_cache (last_hit_at);

------------------------------------------------------------------------------------------
-- Privileges and row-level security
------------------------------------------------------------------------------------------

alter table public.stripe_customers enable row level security;
alter table public.stripe_subscriptions enable row level security;
alter table public.stripe_orders enable row level security;
alter table public.stripe_events enable row level security;
alter table public.ai_usage enable row level security;
alter table public.tts_cache enable row level security;

revoke all on table
  public.stripe_customers, public.stripe_subscriptions, public.stripe_orders, public.stripe_events,
  public.stripe_user_subscriptions, public.stripe_user_orders,
  public.ai_usage, public.tts_cache
  from anon, authenticated, service_role;
revoke all on sequence public.stripe_orders_id_seq from anon, authenticated, service_role;

grant select on table
  public.stripe_customers, public.stripe_subscriptions, public.stripe_orders,
  public.stripe_user_subscriptions, public.stripe_user_orders,
  public.ai_usage
  to authenticated;

grant all on table
  public.stripe_customers, public.stripe_subscriptions, public.stripe_orders, public.stripe_events,
  public.ai_usage, public.tts_cache
  to service_role;
grant select on table public.stripe_user_subscriptions, public.stripe_user_orders to service_role;
grant usage on sequence public.stripe_orders_id_seq to service_role;

create policy "own customer: read" on public.stripe_customers
  for select to authenticated using (user_id = (select auth.uid()));
create policy "own subscriptions: read" on public.stripe_subscriptions
  for select to authenticated using (user_id = (select auth.uid()));
create policy "own orders: read" on public.stripe_orders
  for select to authenticated using (user_id = (select auth.uid()));
create policy "own ai usage: read" on public.ai_usage
  for select to authenticated using (user_id = (select auth.uid()));
