-- The single-column rules of the tables every payment and reward writes (user_profiles,
-- sessions, token_ledger, stripe_orders) move from table CHECK constraints onto domains,
-- the columns' types. The rules are the same; the ones that read two columns stay table
-- CHECKs.
--
-- Why: Postgres 15 reads every CHECK constraint of a table back from its
-- stored text and plans it for each statement that writes a row of the table, whichever
-- columns the statement changes: a rewarded session paid for 14 rules on user_profiles,
-- 8 on sessions and 6 per ledger row, about a tenth of complete_session's time. A
-- domain's rules are read once per connection (the type cache), and checked only where a
-- statement writes the column. Measured in docs/benchmark-notes.md.
--
-- A violation is still SQLSTATE 23514 (check_violation); its message names the domain's
-- rule (`value for domain non_negative_integer violates check constraint
-- "non_negative_integer_check"`) instead of the table's.
--
-- Changing a column's type rewrites the table (to check the domain on every row) under an
-- exclusive lock: on a large deployed database, apply this migration in a quiet moment.

------------------------------------------------------------------------------------------
-- The rules
------------------------------------------------------------------------------------------

create domain public.non_negative_integer as integer
  constraint non_negative_integer_check check (value >= 0);
create domain public.level_number as integer
  constraint level_number_check check (value >= 1);
-- A session's length in seconds: at most a day.
create domain public.session_seconds as integer
  constraint session_seconds_check check (value between 0 and 86400);
-- A ledger row changes the balance.
create domain public.token_delta as integer
  constraint token_delta_check check (value <> 0);

create domain public.text_max_64 as text
  constraint text_max_64_check check (char_length(value) <= 64);
create domain public.text_1_to_64 as text
  constraint text_1_to_64_check check (char_length(value) between 1 and 64);
create domain public.text_max_100 as text
  constraint text_max_100_check check (char_length(value) <= 100);
create domain public.text_max_200 as text
  constraint text_max_200_check check (char_length(value) <= 200);
create domain public.text_1_to_200 as text
  constraint text_1_to_200_check check (char_length(value) between 1 and 200);

-- Bounded so a client cannot store arbitrary amounts of data in its profile.
create domain public.json_object_8k as jsonb
  constraint json_object_8k_check check (jsonb_typeof(value) = 'object' and pg_column_size(value) <= 8192);
create domain public.json_object_16k as jsonb
  constraint json_object_16k_check check (jsonb_typeof(value) = 'object' and pg_column_size(value) <= 16384);
create domain public.json_array_16k as jsonb
  constraint json_array_16k_check check (jsonb_typeof(value) = 'array' and pg_column_size(value) <= 16384);

create domain public.profile_plan as text
  constraint profile_plan_check check (value in ('free', 'mystic'));
create domain public.unrewarded_reason as text
  constraint unrewarded_reason_check
  check (value in ('overlaps_previous_session', 'daily_session_cap', 'daily_xp_minutes_cap'));
-- What each reason's reference is: 20250101000100_economy_schema.sql (token_ledger), and
-- dispute_won: 20250106100200_stripe_paid_amounts_and_disputes.sql.
create domain public.ledger_reason as text
  constraint ledger_reason_check check (value in (
    'session_complete', 'level_up', 'streak_bonus', 'purchase', 'refund', 'spend', 'spend_refund',
    'dispute_won'
  ));
create domain public.order_status as text
  constraint order_status_check check (value in ('pending', 'completed', 'failed', 'refunded', 'review'));

------------------------------------------------------------------------------------------
-- What names the columns, out of the way
------------------------------------------------------------------------------------------

-- A column's type cannot change under a view that reads it or a trigger that names it.
-- Those views and triggers are dropped here and made again at the end from their own
-- stored definitions (with their options, owner and grants), so their source stays in
-- the migrations that made them.
create temporary table rules_as_domains_views as
select v.oid, v.oid::regclass::text as name, pg_get_viewdef(v.oid) as definition,
       v.reloptions, pg_get_userbyid(v.relowner) as owner, v.relacl
  from pg_class v
 where v.relkind = 'v'
   and v.oid in (select r.ev_class
                   from pg_depend d
                   join pg_rewrite r on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
                  where d.refclassid = 'pg_class'::regclass
                    and d.refobjid in ('public.user_profiles'::regclass, 'public.sessions'::regclass,
                                       'public.token_ledger'::regclass, 'public.stripe_orders'::regclass));

create temporary table rules_as_domains_triggers as
select t.tgname as name, t.tgrelid::regclass::text as on_table, pg_get_triggerdef(t.oid) as definition
  from pg_trigger t
 where not t.tgisinternal
   and t.tgattr <> ''::int2vector
   and t.tgrelid in ('public.user_profiles'::regclass, 'public.sessions'::regclass,
                     'public.token_ledger'::regclass, 'public.stripe_orders'::regclass);

do $$
declare
  v record;
begin
  -- Views of views (none today) go first: newest first.
  for v in select name from rules_as_domains_views order by oid desc loop
    execute format('drop view %s', v.name);
  end loop;
  for v in select name, on_table from rules_as_domains_triggers loop
    execute format('drop trigger %I on %s', v.name, v.on_table);
  end loop;
end
$$;

------------------------------------------------------------------------------------------
-- The columns
------------------------------------------------------------------------------------------

alter table public.user_profiles
  drop constraint user_profiles_display_name_check,
  drop constraint user_profiles_level_check,
  drop constraint user_profiles_experience_check,
  drop constraint user_profiles_tokens_check,
  drop constraint user_profiles_session_streak_check,
  drop constraint user_profiles_plan_check,
  drop constraint user_profiles_ego_state_usage_check,
  drop constraint user_profiles_active_ego_state_check,
  drop constraint user_profiles_journey_goals_check,
  drop constraint user_profiles_journey_preferences_check,
  drop constraint user_profiles_settings_check,
  drop constraint user_profiles_sessions_completed_check,
  drop constraint user_profiles_reward_day_sessions_check,
  drop constraint user_profiles_reward_day_xp_minutes_check,
  alter column display_name type public.text_max_100,
  alter column level type public.level_number,
  alter column experience type public.non_negative_integer,
  alter column tokens type public.non_negative_integer,
  alter column session_streak type public.non_negative_integer,
  alter column plan type public.profile_plan,
  alter column ego_state_usage type public.json_object_8k,
  alter column active_ego_state type public.text_max_64,
  alter column journey_goals type public.json_array_16k,
  alter column journey_preferences type public.json_object_16k,
  alter column settings type public.json_object_16k,
  alter column sessions_completed type public.non_negative_integer,
  alter column reward_day_sessions type public.non_negative_integer,
  alter column reward_day_xp_minutes type public.non_negative_integer;

alter table public.sessions
  drop constraint sessions_ego_state_check,
  drop constraint sessions_action_check,
  drop constraint sessions_duration_check,
  drop constraint sessions_experience_gained_check,
  drop constraint sessions_tokens_awarded_check,
  drop constraint sessions_request_fingerprint_check,
  drop constraint sessions_unrewarded_reason_check,
  alter column ego_state type public.text_1_to_64,
  alter column action type public.text_max_64,
  alter column duration type public.session_seconds,
  alter column experience_gained type public.non_negative_integer,
  alter column tokens_awarded type public.non_negative_integer,
  alter column request_fingerprint type public.text_1_to_200,
  alter column unrewarded_reason type public.unrewarded_reason;

alter table public.token_ledger
  drop constraint token_ledger_delta_check,
  drop constraint token_ledger_reason_check,
  drop constraint token_ledger_reference_check,
  drop constraint token_ledger_balance_after_check,
  alter column delta type public.token_delta,
  alter column reason type public.ledger_reason,
  alter column reference type public.text_1_to_200,
  alter column balance_after type public.non_negative_integer;

alter table public.stripe_orders
  drop constraint stripe_orders_product_check,
  drop constraint stripe_orders_tokens_check,
  drop constraint stripe_orders_status_check,
  drop constraint stripe_orders_tokens_reversed_check,
  drop constraint stripe_orders_refund_shortfall_check,
  drop constraint stripe_orders_review_reason_check,
  alter column product type public.text_1_to_64,
  alter column tokens type public.non_negative_integer,
  alter column status type public.order_status,
  alter column tokens_reversed type public.non_negative_integer,
  alter column refund_shortfall type public.non_negative_integer,
  alter column review_reason type public.text_max_200;

------------------------------------------------------------------------------------------
-- The views and triggers, as they were
------------------------------------------------------------------------------------------

do $$
declare
  v record;
  g record;
begin
  for v in select * from rules_as_domains_views order by oid loop
    execute format('create view %s%s as %s', v.name,
                   case when v.reloptions is null then ''
                        else format(' with (%s)', array_to_string(v.reloptions, ', ')) end,
                   v.definition);
    execute format('alter view %s owner to %I', v.name, v.owner);
    -- A new view gets the schema's default privileges; it keeps exactly its old ones.
    execute format('revoke all on table %s from public, anon, authenticated, service_role', v.name);
    for g in select a.grantee, a.privilege_type, a.is_grantable
               from aclexplode(v.relacl) a
              where a.grantee <> (select oid from pg_roles where rolname = v.owner) loop
      execute format('grant %s on table %s to %s%s', g.privilege_type, v.name,
                     case when g.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(g.grantee)) end,
                     case when g.is_grantable then ' with grant option' else '' end);
    end loop;
  end loop;
  for v in select definition from rules_as_domains_triggers loop
    execute v.definition;
  end loop;
end
$$;

drop table rules_as_domains_views, rules_as_domains_triggers;

-- user_insights keeps a row of insights_totals, whose type was made again above; altering
-- the function makes connections that ran it before compile it again.
alter function public.user_insights(uuid, integer) set search_path = public, pg_temp;
