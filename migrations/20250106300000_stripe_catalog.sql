-- The Stripe catalog in Postgres: which Stripe price each product of
-- `shared/src/stripe/catalog.rs` is sold at, so checkout needs no price variables.
--
-- Who writes it:
-- * `libero stripe sync` (cli/), after it made Stripe match the catalog, through
--   stripe_catalog_store;
-- * the webhook, for `price.created`, `price.updated`, `price.deleted`, `product.updated`
--   and `product.deleted`, through stripe_apply_catalog_price / _product: the same
--   exactly-once path as every event (the event's row is the first write).
--
-- Out-of-order events: as for subscriptions (20250102000000_stripe_functions.sql), the
-- webhook does not trust the event's copy: it re-reads the price (with its product) from
-- Stripe and passes the time its read started. A row is only overwritten by a read that
-- started at the same time or later (price_read_at for the price's own fields,
-- product_read_at for its product's `active`), so whatever order the events arrive in,
-- the last read wins and it saw the final state. The sync stamps each object with the
-- time of the request that returned it.
--
-- Which price is sold: per product, the price that carries the catalog's lookup key for
-- it (catalog_lookup), is active, whose product is active, and that is not deleted; if
-- two do for a moment (a new price's event before the old one's), the newest. A price
-- archived in the Dashboard therefore stops being sold, and a new price given the
-- catalog's lookup key takes its place. The `stripe_price_*` variables, when set, still
-- win (the components apply them; see catalog.rs).
--
-- Credits (20250106100200_stripe_paid_amounts_and_disputes.sql) check a paid session
-- against the price sold now: its id, and the amount and currency Stripe reports for
-- it. A session opened at a price that was replaced before it was paid is held for
-- review (`price_mismatch`), never credited at a price that is no longer sold.

create table public.stripe_catalog_prices (
  price_id text primary key check (price_id ~ '^[A-Za-z0-9_]{1,255}$'),
  -- The catalog product (catalog.rs `key`) this price belongs to.
  product_key text not null check (product_key ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  stripe_product_id text not null check (stripe_product_id ~ '^[A-Za-z0-9_]{1,255}$'),
  lookup_key text check (char_length(lookup_key) <= 200),
  -- lookup_key is the catalog's lookup key for product_key: the price may be sold.
  catalog_lookup boolean not null,
  -- Null for prices Stripe gives no unit amount (tiered): sold, but never credited.
  unit_amount bigint check (unit_amount >= 0),
  currency text not null check (currency ~ '^[a-z]{3}$'),
  recurring_interval text check (recurring_interval in ('day', 'week', 'month', 'year')),
  recurring_interval_count integer check (recurring_interval_count > 0),
  active boolean not null,
  product_active boolean not null,
  -- Deleted in Stripe (`price.deleted`, or a re-read answered 404): kept for history.
  deleted boolean not null default false,
  -- The price's `created` (Stripe's clock): the newest candidate wins.
  stripe_created timestamptz,
  price_read_at timestamptz not null,
  product_read_at timestamptz not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index stripe_catalog_prices_product_idx on public.stripe_catalog_prices (stripe_product_id);
create trigger stripe_catalog_prices_set_updated_at
  before update on public.stripe_catalog_prices
  for each row execute function public.set_updated_at();

-- The Billing Portal configuration the sync made: portal sessions name it, since an
-- account (test mode especially) may have no default configuration.
create table public.stripe_catalog_portal (
  singleton boolean primary key default true check (singleton),
  configuration_id text not null check (configuration_id ~ '^[A-Za-z0-9_]{1,255}$'),
  read_at timestamptz not null,
  updated_at timestamptz not null default now()
);

alter table public.stripe_catalog_prices enable row level security;
alter table public.stripe_catalog_portal enable row level security;
revoke all on table public.stripe_catalog_prices, public.stripe_catalog_portal from anon, authenticated, service_role;
grant all on table public.stripe_catalog_prices, public.stripe_catalog_portal to service_role;

-- One price, as catalog.rs `price_row` makes it from a Stripe price:
-- {"price_id", "product_key" (null: not identifiable as a catalog product's), "product_id",
--  "lookup_key", "catalog_lookup", "unit_amount", "currency", "interval",
--  "interval_count", "active", "product_active", "created" (unix s), "deleted",
--  "read_at_ms", "product_read_at_ms"}
-- or, for a price Stripe no longer has, {"price_id", "deleted": true, "read_at_ms"}.
-- Returns 'inserted', 'updated', 'unchanged' (same content; the read times still move
-- on), 'stale' (a later read is stored) or 'not_catalog' (not a catalog price, and no row).
create function public.stripe_catalog_put_price(p jsonb) returns text
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_id text := p ->> 'price_id';
  v_read timestamptz := to_timestamp((p ->> 'read_at_ms')::bigint / 1000.0);
  v_product_read timestamptz := to_timestamp(coalesce((p ->> 'product_read_at_ms')::bigint, (p ->> 'read_at_ms')::bigint) / 1000.0);
  v_deleted boolean := coalesce((p ->> 'deleted')::boolean, false);
  v_row public.stripe_catalog_prices;
  v_new public.stripe_catalog_prices;
begin
  if v_id is null or p ->> 'read_at_ms' is null then
    raise exception using errcode = '22023', message = 'a catalog price needs price_id and read_at_ms';
  end if;
  select * into v_row from public.stripe_catalog_prices where price_id = v_id for update;
  if not found then
    if v_deleted or p ->> 'product_key' is null then
      return 'not_catalog';
    end if;
    insert into public.stripe_catalog_prices (
      price_id, product_key, stripe_product_id, lookup_key, catalog_lookup, unit_amount, currency,
      recurring_interval, recurring_interval_count, active, product_active, stripe_created,
      price_read_at, product_read_at
    ) values (
      v_id, p ->> 'product_key', p ->> 'product_id', p ->> 'lookup_key',
      coalesce((p ->> 'catalog_lookup')::boolean, false), (p ->> 'unit_amount')::bigint,
      lower(p ->> 'currency'), p ->> 'interval', (p ->> 'interval_count')::integer,
      coalesce((p ->> 'active')::boolean, false), coalesce((p ->> 'product_active')::boolean, true),
      to_timestamp((p ->> 'created')::bigint), v_read, v_product_read
    )
    on conflict (price_id) do nothing;
    if found then
      return 'inserted';
    end if;
    -- A concurrent delivery inserted it first: continue as an update of its row.
    select * into v_row from public.stripe_catalog_prices where price_id = v_id for update;
  end if;

  v_new := v_row;
  if v_row.price_read_at <= v_read then
    v_new.price_read_at := v_read;
    if v_deleted then
      v_new.deleted := true;
      v_new.active := false;
    else
      v_new.product_key := coalesce(p ->> 'product_key', v_row.product_key);
      v_new.stripe_product_id := coalesce(p ->> 'product_id', v_row.stripe_product_id);
      v_new.lookup_key := p ->> 'lookup_key';
      -- A price no longer identifiable as the catalog's (its lookup key moved away from a
      -- product without our metadata) is no longer a candidate.
      v_new.catalog_lookup := p ->> 'product_key' is not null and coalesce((p ->> 'catalog_lookup')::boolean, false);
      v_new.unit_amount := (p ->> 'unit_amount')::bigint;
      v_new.currency := coalesce(lower(p ->> 'currency'), v_row.currency);
      v_new.recurring_interval := p ->> 'interval';
      v_new.recurring_interval_count := (p ->> 'interval_count')::integer;
      v_new.active := coalesce((p ->> 'active')::boolean, false);
      v_new.deleted := false;
      v_new.stripe_created := coalesce(to_timestamp((p ->> 'created')::bigint), v_row.stripe_created);
    end if;
  end if;
  if v_row.product_read_at <= v_product_read and p ? 'product_active' and not v_deleted then
    v_new.product_read_at := v_product_read;
    v_new.product_active := coalesce((p ->> 'product_active')::boolean, v_row.product_active);
  end if;
  if v_new.price_read_at = v_row.price_read_at and v_new.product_read_at = v_row.product_read_at
     and v_row.price_read_at > v_read then
    return 'stale';
  end if;

  update public.stripe_catalog_prices set
    product_key = v_new.product_key, stripe_product_id = v_new.stripe_product_id,
    lookup_key = v_new.lookup_key, catalog_lookup = v_new.catalog_lookup,
    unit_amount = v_new.unit_amount, currency = v_new.currency,
    recurring_interval = v_new.recurring_interval, recurring_interval_count = v_new.recurring_interval_count,
    active = v_new.active, product_active = v_new.product_active, deleted = v_new.deleted,
    stripe_created = v_new.stripe_created, price_read_at = v_new.price_read_at,
    product_read_at = v_new.product_read_at
  where price_id = v_id;
  return case
    when (v_new.product_key, v_new.stripe_product_id, v_new.lookup_key, v_new.catalog_lookup, v_new.unit_amount,
          v_new.currency, v_new.recurring_interval, v_new.recurring_interval_count, v_new.active,
          v_new.product_active, v_new.deleted)
         is distinct from
         (v_row.product_key, v_row.stripe_product_id, v_row.lookup_key, v_row.catalog_lookup, v_row.unit_amount,
          v_row.currency, v_row.recurring_interval, v_row.recurring_interval_count, v_row.active,
          v_row.product_active, v_row.deleted)
    then 'updated' else 'unchanged' end;
end
$$;

-- A product's `active`, as read from Stripe at p_read_at_ms, onto its stored prices.
-- Returns 'updated', 'unchanged', 'stale' or 'not_catalog' (no stored price).
create function public.stripe_catalog_put_product(p_product_id text, p_active boolean, p_read_at_ms bigint) returns text
  language plpgsql
  set search_path = public, pg_temp
  as $$
declare
  v_read timestamptz := to_timestamp(p_read_at_ms / 1000.0);
  v_total integer;
  v_fresh integer;
  v_changed integer;
begin
  perform 1 from public.stripe_catalog_prices where stripe_product_id = p_product_id order by price_id for update;
  select count(*),
         count(*) filter (where product_read_at <= v_read),
         count(*) filter (where product_read_at <= v_read and product_active is distinct from p_active)
    into v_total, v_fresh, v_changed
    from public.stripe_catalog_prices where stripe_product_id = p_product_id;
  if v_total = 0 then
    return 'not_catalog';
  end if;
  update public.stripe_catalog_prices set product_active = p_active, product_read_at = v_read
   where stripe_product_id = p_product_id and product_read_at <= v_read;
  return case when v_fresh = 0 then 'stale' when v_changed > 0 then 'updated' else 'unchanged' end;
end
$$;

-- What the components sell, in one read: {"prices": {product_key: price}, "overrides":
-- {price_id: price}, "portal_configuration": text|null}, where price is {"price_id",
-- "product_key", "unit_amount", "currency", "interval", "interval_count", "active"}.
-- `prices` holds each product's price sold now (see the top of this file); `overrides`
-- the stored rows of the price ids in p_overrides (a jsonb array: the `stripe_price_*`
-- variables that are set), so an override's amount is shown when it is known.
create function public.stripe_catalog(p_overrides jsonb) returns jsonb
  language sql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
  with sold as (
    select distinct on (product_key) *
      from public.stripe_catalog_prices
     where catalog_lookup and active and product_active and not deleted
     order by product_key, stripe_created desc nulls last, price_read_at desc, price_id desc
  )
  select jsonb_build_object(
    'prices', coalesce((select jsonb_object_agg(s.product_key, jsonb_build_object(
        'price_id', s.price_id, 'product_key', s.product_key, 'unit_amount', s.unit_amount,
        'currency', s.currency, 'interval', s.recurring_interval,
        'interval_count', s.recurring_interval_count, 'active', true)) from sold s), '{}'::jsonb),
    'overrides', coalesce((select jsonb_object_agg(c.price_id, jsonb_build_object(
        'price_id', c.price_id, 'product_key', c.product_key, 'unit_amount', c.unit_amount,
        'currency', c.currency, 'interval', c.recurring_interval,
        'interval_count', c.recurring_interval_count,
        'active', c.active and c.product_active and not c.deleted))
        from public.stripe_catalog_prices c
       where c.price_id in (select jsonb_array_elements_text(
               case when jsonb_typeof(p_overrides) = 'array' then p_overrides else '[]'::jsonb end))),
      '{}'::jsonb),
    'portal_configuration', (select configuration_id from public.stripe_catalog_portal));
$$;

-- `libero stripe sync`: the prices it left in Stripe (a jsonb array of rows as for
-- stripe_catalog_put_price: the sold ones and any it archived) and the portal
-- configuration ({"configuration_id", "read_at_ms"} or null), in one statement.
-- Returns {"prices": {price_id: outcome}, "portal": 'inserted'|'updated'|'unchanged'|'stale'|null}.
create function public.stripe_catalog_store(p_prices jsonb, p_portal jsonb) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_price jsonb;
  v_outcomes jsonb := '{}'::jsonb;
  v_portal text;
  v_read timestamptz;
  v_old public.stripe_catalog_portal;
begin
  for v_price in select value from jsonb_array_elements(coalesce(p_prices, '[]'::jsonb)) order by value ->> 'price_id' loop
    v_outcomes := v_outcomes || jsonb_build_object(v_price ->> 'price_id', public.stripe_catalog_put_price(v_price));
  end loop;
  if p_portal is not null and p_portal ->> 'configuration_id' is not null then
    v_read := to_timestamp((p_portal ->> 'read_at_ms')::bigint / 1000.0);
    select * into v_old from public.stripe_catalog_portal for update;
    if not found then
      insert into public.stripe_catalog_portal (configuration_id, read_at)
      values (p_portal ->> 'configuration_id', v_read);
      v_portal := 'inserted';
    elsif v_old.read_at > v_read then
      v_portal := 'stale';
    else
      update public.stripe_catalog_portal set configuration_id = p_portal ->> 'configuration_id', read_at = v_read;
      v_portal := case when v_old.configuration_id = p_portal ->> 'configuration_id' then 'unchanged' else 'updated' end;
    end if;
  end if;
  return jsonb_build_object('prices', v_outcomes, 'portal', v_portal);
end
$$;

-- `price.created` / `price.updated` / `price.deleted`, with the price as re-read from
-- Stripe (p_price as for stripe_catalog_put_price). Returns {"outcome": "applied" |
-- "unchanged" | "stale" | "not_catalog" | "duplicate"}.
create function public.stripe_apply_catalog_price(p_event_id text, p_type text, p_created bigint, p_price jsonb)
  returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_result text;
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;
  v_result := public.stripe_catalog_put_price(p_price);
  return public.stripe_finish_event(p_event_id, jsonb_build_object(
    'outcome', case when v_result in ('inserted', 'updated') then 'applied' else v_result end));
end
$$;

-- `product.updated` / `product.deleted`, with the product's `active` as re-read from
-- Stripe (false once it is gone). Returns {"outcome": as above}.
create function public.stripe_apply_catalog_product(
  p_event_id text,
  p_type text,
  p_created bigint,
  p_product_id text,
  p_active boolean,
  p_read_at_ms bigint
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_result text;
begin
  if not public.stripe_begin_event(p_event_id, p_type, p_created) then
    return jsonb_build_object('outcome', 'duplicate');
  end if;
  v_result := public.stripe_catalog_put_product(p_product_id, p_active, p_read_at_ms);
  return public.stripe_finish_event(p_event_id, jsonb_build_object(
    'outcome', case when v_result = 'updated' then 'applied' else v_result end));
end
$$;

-- As before (20250102000000_stripe_functions.sql), plus the catalog
-- (stripe_catalog(p_price_overrides)) under "catalog", so checkout learns the price it
-- sells in the statement it already runs.
create function public.stripe_checkout_state(p_user uuid, p_price_overrides jsonb) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  if not public.ensure_user_profile(p_user) then
    return jsonb_build_object('user_exists', false);
  end if;
  return jsonb_build_object(
    'user_exists', true,
    'customer_id', (select customer_id from public.stripe_customers
                     where user_id = p_user and deleted_at is null),
    'deleted_customer_id', (select customer_id from public.stripe_customers
                             where user_id = p_user and deleted_at is not null),
    'has_active_subscription', exists (
      select 1 from public.stripe_subscriptions
       where user_id = p_user and status in ('active', 'trialing')),
    'has_paid', exists (select 1 from public.stripe_subscriptions where user_id = p_user)
             or exists (select 1 from public.stripe_orders
                         where user_id = p_user and status in ('completed', 'refunded')),
    'catalog', public.stripe_catalog(p_price_overrides));
end
$$;

revoke all on function public.stripe_catalog_put_price(jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_catalog_put_product(text, boolean, bigint) from public, anon, authenticated, service_role;
revoke all on function public.stripe_catalog(jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_catalog_store(jsonb, jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_catalog_price(text, text, bigint, jsonb) from public, anon, authenticated, service_role;
revoke all on function public.stripe_apply_catalog_product(text, text, bigint, text, boolean, bigint)
  from public, anon, authenticated, service_role;
revoke all on function public.stripe_checkout_state(uuid, jsonb) from public, anon, authenticated, service_role;
grant execute on function public.stripe_catalog(jsonb) to service_role;
grant execute on function public.stripe_catalog_store(jsonb, jsonb) to service_role;
grant execute on function public.stripe_apply_catalog_price(text, text, bigint, jsonb) to service_role;
grant execute on function public.stripe_apply_catalog_product(text, text, bigint, text, boolean, bigint) to service_role;
grant execute on function public.stripe_checkout_state(uuid, jsonb) to service_role;
