-- The database the project replaces, as it is: the shape the app team's audit describes
-- (the columns its client reads and writes), with the Stripe tables, enums and views of
-- the Bolt / Supabase Stripe template as that template publishes them. Applied on top of
-- migrations/20250101000000_supabase_compat.sql (roles, auth.users, auth.uid()), which
-- stands in for what a Supabase project already has.
--
-- Written the way that database was: defaults instead of rules, the client allowed to
-- update its whole profile row (tokens and experience included), sessions and protocols
-- written straight from the client.

------------------------------------------------------------------------------------------
-- The app's tables
------------------------------------------------------------------------------------------

create table public.user_profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  display_name text,
  level integer default 1,
  experience integer default 0,
  tokens integer default 100,
  session_streak integer default 0,
  last_session_date date,
  ego_state_usage jsonb default '{}'::jsonb,
  active_ego_state text default 'guardian',
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

-- The audit's "required changes", as written for this database.
alter table public.user_profiles add column if not exists onboarding_completed boolean default false;
alter table public.user_profiles add column if not exists journey_goals jsonb default '[]'::jsonb;
alter table public.user_profiles add column if not exists journey_preferences jsonb default '{}'::jsonb;
alter table public.user_profiles add column if not exists settings jsonb default '{}'::jsonb;

create table public.custom_protocols (
  id uuid primary key default gen_random_uuid(),
  user_id uuid references public.user_profiles (id) on delete cascade,
  name text not null,
  description text,
  induction text,
  deepener text,
  duration integer,
  ego_state text,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

create table public.sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid references public.user_profiles (id) on delete cascade,
  protocol_id uuid,
  ego_state text,
  action text,
  duration integer,
  experience_gained integer default 0,
  completed_at timestamptz default now(),
  created_at timestamptz default now()
);

alter table public.user_profiles enable row level security;
alter table public.custom_protocols enable row level security;
alter table public.sessions enable row level security;

create policy "Users can view own profile" on public.user_profiles
  for select using (auth.uid() = id);
create policy "Users can update own profile" on public.user_profiles
  for update using (auth.uid() = id);
create policy "Users can insert own profile" on public.user_profiles
  for insert with check (auth.uid() = id);
create policy "Users can manage own protocols" on public.custom_protocols
  for all using (auth.uid() = user_id);
create policy "Users can manage own sessions" on public.sessions
  for all using (auth.uid() = user_id);

grant select, insert, update, delete on public.user_profiles, public.custom_protocols, public.sessions
  to authenticated;

-- The usual Supabase sign-up trigger.
create function public.handle_new_user() returns trigger
  language plpgsql
  security definer
  set search_path = public
  as $$
begin
  insert into public.user_profiles (id, email) values (new.id, new.email);
  return new;
end
$$;

create trigger on_auth_user_created
  after insert on auth.users
  for each row execute function public.handle_new_user();

------------------------------------------------------------------------------------------
-- The Stripe template
------------------------------------------------------------------------------------------

create table public.stripe_customers (
  id bigint primary key generated always as identity,
  user_id uuid references auth.users (id) not null unique,
  customer_id text not null unique,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  deleted_at timestamptz default null
);

alter table public.stripe_customers enable row level security;
create policy "Users can view their own customer data" on public.stripe_customers
  for select to authenticated using (user_id = auth.uid() and deleted_at is null);

create type public.stripe_subscription_status as enum (
  'not_started', 'incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due',
  'canceled', 'unpaid', 'paused'
);

create table public.stripe_subscriptions (
  id bigint primary key generated always as identity,
  customer_id text unique not null,
  subscription_id text default null,
  price_id text default null,
  current_period_start bigint default null,
  current_period_end bigint default null,
  cancel_at_period_end boolean default false,
  payment_method_brand text default null,
  payment_method_last4 text default null,
  status public.stripe_subscription_status not null,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  deleted_at timestamptz default null
);

alter table public.stripe_subscriptions enable row level security;
create policy "Users can view their own subscription data" on public.stripe_subscriptions
  for select to authenticated using (
    customer_id in (select customer_id from public.stripe_customers
                     where user_id = auth.uid() and deleted_at is null)
    and deleted_at is null);

create type public.stripe_order_status as enum ('pending', 'completed', 'canceled');

create table public.stripe_orders (
  id bigint primary key generated always as identity,
  checkout_session_id text not null,
  payment_intent_id text not null,
  customer_id text not null,
  amount_subtotal bigint not null,
  amount_total bigint not null,
  currency text not null,
  payment_status text not null,
  status public.stripe_order_status not null default 'pending',
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  deleted_at timestamptz default null
);

alter table public.stripe_orders enable row level security;
create policy "Users can view their own order data" on public.stripe_orders
  for select to authenticated using (
    customer_id in (select customer_id from public.stripe_customers
                     where user_id = auth.uid() and deleted_at is null)
    and deleted_at is null);

create view public.stripe_user_subscriptions with (security_invoker = true) as
select c.customer_id, s.subscription_id, s.status as subscription_status, s.price_id,
       s.current_period_start, s.current_period_end, s.cancel_at_period_end,
       s.payment_method_brand, s.payment_method_last4
  from public.stripe_customers c
  left join public.stripe_subscriptions s on c.customer_id = s.customer_id
 where c.user_id = auth.uid() and c.deleted_at is null and s.deleted_at is null;

create view public.stripe_user_orders with (security_invoker) as
select c.customer_id, o.id as order_id, o.checkout_session_id, o.payment_intent_id,
       o.amount_subtotal, o.amount_total, o.currency, o.payment_status,
       o.status as order_status, o.created_at as order_date
  from public.stripe_customers c
  left join public.stripe_orders o on c.customer_id = o.customer_id
 where c.user_id = auth.uid() and c.deleted_at is null and o.deleted_at is null;

grant select on public.stripe_customers, public.stripe_subscriptions, public.stripe_orders,
  public.stripe_user_subscriptions, public.stripe_user_orders to authenticated;

------------------------------------------------------------------------------------------
-- The Supabase CLI's record of that database's own migrations
------------------------------------------------------------------------------------------

create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text not null primary key,
  statements text[],
  name text
);
insert into supabase_migrations.schema_migrations (version, name) values
  ('20240611093000', 'initial_schema'),
  ('20240702120000', 'stripe_template'),
  ('20240815101500', 'journey_fields');
