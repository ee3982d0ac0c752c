-- Reconciliation's position in Stripe's event log, stored after every page so that a run
-- cut short (its time budget, a rate limit, a killed process) keeps what it did.
--
-- Two positions (shared/src/stripe/reconcile.rs explains the walk):
-- * the head (`anchor_event_id`, `anchor_created`): the newest event handled. New events
--   are read from there, so they never wait behind events read before.
-- * the settled position (`settled_event_id`, `settled_created`): every event listed
--   before it was handled, and it is old enough (older than the overlap window when it was
--   read) that Stripe can no longer list a new event below it. Between the two, events
--   are read once more when they settle, for any that Stripe listed late. With no event
--   id, `settled_created` alone is a time: every event created before it was handled
--   (the first runs, before any event was found).
-- Every function returns one row (Spin 4.0.x hangs on zero rows).

alter table public.stripe_reconcile_state
  add column settled_event_id text check (settled_event_id ~ '^evt_[A-Za-z0-9_]{1,200}$'),
  add column settled_created bigint;

-- A database reconciled before this migration: its cursor was re-checked by the overlap
-- window on every run, so it is settled.
update public.stripe_reconcile_state
   set settled_event_id = anchor_event_id, settled_created = anchor_created
 where anchor_event_id is not null;

drop function if exists public.stripe_reconcile_advance(text, bigint, jsonb);

-- {"anchor_event_id", "anchor_created", "settled_event_id", "settled_created"}, each
-- null when not known yet.
create or replace function public.stripe_reconcile_cursor() returns jsonb
  language sql
  stable
  security definer
  set search_path = public, pg_temp
  as $$
  select jsonb_build_object(
    'anchor_event_id', (select anchor_event_id from public.stripe_reconcile_state),
    'anchor_created', (select anchor_created from public.stripe_reconcile_state),
    'settled_event_id', (select settled_event_id from public.stripe_reconcile_state),
    'settled_created', (select settled_created from public.stripe_reconcile_state));
$$;

-- Stores a run's positions and, when given, its report. Each position only moves forward
-- (by `created`): a concurrent run that got further keeps its position, and both runs'
-- positions are true statements about the log, so the further one is the one to keep. A
-- null position keeps the stored one; a null report keeps the last run's.
-- Returns the positions as stored.
create function public.stripe_reconcile_save(
  p_head_id text, p_head_created bigint, p_settled_id text, p_settled_created bigint, p_report jsonb
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
begin
  insert into public.stripe_reconcile_state as s
    (id, anchor_event_id, anchor_created, settled_event_id, settled_created, last_run)
  values (true, p_head_id, p_head_created, p_settled_id, p_settled_created, p_report)
  on conflict (id) do update set
    anchor_event_id = case when excluded.anchor_created is not null
                            and (s.anchor_created is null or s.anchor_created <= excluded.anchor_created)
                           then excluded.anchor_event_id else s.anchor_event_id end,
    anchor_created = case when excluded.anchor_created is not null
                           and (s.anchor_created is null or s.anchor_created <= excluded.anchor_created)
                          then excluded.anchor_created else s.anchor_created end,
    -- At the same second an event is further than a bare time.
    settled_event_id = case when excluded.settled_created is not null
                             and (s.settled_created is null or s.settled_created < excluded.settled_created
                                  or (s.settled_created = excluded.settled_created
                                      and excluded.settled_event_id is not null))
                            then excluded.settled_event_id else s.settled_event_id end,
    settled_created = case when excluded.settled_created is not null
                            and (s.settled_created is null or s.settled_created < excluded.settled_created
                                 or (s.settled_created = excluded.settled_created
                                     and excluded.settled_event_id is not null))
                           then excluded.settled_created else s.settled_created end,
    last_run = coalesce(excluded.last_run, s.last_run),
    updated_at = now();
  return public.stripe_reconcile_cursor();
end
$$;

revoke all on function public.stripe_reconcile_cursor() from public, anon, authenticated, service_role;
revoke all on function public.stripe_reconcile_save(text, bigint, text, bigint, jsonb)
  from public, anon, authenticated, service_role;
