-- Premium voice limits: what a premium ElevenLabs call may
-- cost the operator is bounded before the call, in one statement.
--
-- * Models are rows of premium_tts_models, each priced by a token_prices feature: a model
--   that is not a row is refused, and the price in tokens follows the model (ElevenLabs
--   bills its Flash/Turbo models at half the credits per character of the others).
-- * Every call counts against the hourly AI quota (ai_quota_take, endpoint
--   'elevenlabs-tts-proxy'), mystic or not.
-- * Plan 'mystic' pays no tokens but has a character budget per calendar month (UTC),
--   given by the caller (Spin variable elevenlabs_mystic_chars_per_month).
-- * A refused call (unknown model, over the quota, over the budget, not enough tokens)
--   changes nothing: the quota count it took is given back in the same statement.
-- Voices are not rows: which voice ids may be used is the operator's setting
-- (elevenlabs_voice_ids), checked by the server before this is called.

insert into public.token_prices (feature, tokens, unit_chars) values ('elevenlabs_tts_fast', 1, 1000);

create table public.premium_tts_models (
  model_id text primary key check (model_id ~ '^[A-Za-z0-9_-]{1,64}$'),
  feature text not null references public.token_prices (feature)
);

insert into public.premium_tts_models (model_id, feature) values
  ('eleven_multilingual_v2', 'elevenlabs_tts'),
  ('eleven_v3', 'elevenlabs_tts'),
  ('eleven_turbo_v2_5', 'elevenlabs_tts_fast'),
  ('eleven_flash_v2_5', 'elevenlabs_tts_fast');

-- Characters of premium speech used on plan mystic, per user and month.
create table public.premium_tts_usage (
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  period_start timestamptz not null,
  chars integer not null default 0 check (chars >= 0),
  primary key (user_id, period_start)
);

-- Each free (mystic) call's characters by its reference, so a failed call gives its
-- characters back exactly once.
create table public.premium_tts_free_calls (
  user_id uuid not null references public.user_profiles (id) on delete cascade,
  reference text not null check (char_length(reference) between 1 and 200),
  period_start timestamptz not null,
  chars integer not null check (chars > 0),
  refunded boolean not null default false,
  primary key (user_id, reference)
);
create index premium_tts_free_calls_user_period_idx on public.premium_tts_free_calls (user_id, period_start);

alter table public.premium_tts_models enable row level security;
alter table public.premium_tts_usage enable row level security;
alter table public.premium_tts_free_calls enable row level security;
revoke all on table public.premium_tts_models, public.premium_tts_usage, public.premium_tts_free_calls
  from anon, authenticated, service_role;
-- The app may show which models exist and what they cost, and the user their own usage.
grant select on table public.premium_tts_models, public.premium_tts_usage to authenticated;
grant all on table public.premium_tts_models, public.premium_tts_usage, public.premium_tts_free_calls to service_role;
create policy "premium models: read" on public.premium_tts_models for select to authenticated using (true);
create policy "own premium usage: read" on public.premium_tts_usage
  for select to authenticated using (user_id = (select auth.uid()));

-- Charges for one premium call before it is made. Returns one of
--   {"ok":false, "reason":"unknown_model"}
--   {"ok":false, "reason":"unknown_user"}
--   {"ok":false, "reason":"rate_limited", "quota":{ai_quota_take's refusal}}
--   {"ok":false, "reason":"budget_exhausted", "plan":"mystic", "budget", "used", "chars", "reset_after"}
--   spend_tokens_for's refusal ({"ok":false, "reason":"insufficient_tokens", "cost", "balance"}, ...)
--   {"ok":true, "charged":false, "plan":"mystic", "chars", "used", "budget"}   free, budget counted
--   spend_tokens_for's success + {"charged":true, "plan", "feature"}
create function public.premium_tts_charge(
  p_user uuid,
  p_chars integer,
  p_reference text,
  p_model text,
  p_free_per_hour integer,
  p_mystic_per_hour integer,
  p_mystic_chars_per_month integer
) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_feature text;
  v_plan text;
  v_quota jsonb;
  v_period timestamptz := date_trunc('month', now(), 'UTC');
  v_used integer;
  v_answer jsonb;
begin
  if p_chars is null or p_chars < 1 or p_reference is null or p_mystic_chars_per_month is null
     or p_mystic_chars_per_month < 0 then
    raise exception using errcode = '22023', message = 'premium_tts_charge: invalid arguments';
  end if;
  select feature into v_feature from public.premium_tts_models where model_id = p_model;
  if v_feature is null then
    return jsonb_build_object('ok', false, 'reason', 'unknown_model');
  end if;

  v_quota := public.ai_quota_take(p_user, 'elevenlabs-tts-proxy', p_free_per_hour, p_mystic_per_hour);
  if v_quota ->> 'reason' = 'unknown_user' then
    return jsonb_build_object('ok', false, 'reason', 'unknown_user');
  end if;
  if not (v_quota ->> 'allowed')::boolean then
    return jsonb_build_object('ok', false, 'reason', 'rate_limited', 'quota', v_quota);
  end if;

  -- The profile lock orders this user's charges and refunds (as every token function).
  select plan into v_plan from public.user_profiles where id = p_user for update;

  if v_plan = 'mystic' then
    insert into public.premium_tts_usage as u (user_id, period_start, chars)
    values (p_user, v_period, p_chars)
    on conflict (user_id, period_start)
      do update set chars = u.chars + p_chars where u.chars + p_chars <= p_mystic_chars_per_month
    returning u.chars into v_used;
    if v_used is not null and v_used > p_mystic_chars_per_month then
      -- A first call of the month larger than the whole budget.
      delete from public.premium_tts_usage where user_id = p_user and period_start = v_period;
      v_used := null;
    end if;
    if v_used is null then
      v_answer := jsonb_build_object(
        'ok', false, 'reason', 'budget_exhausted', 'plan', v_plan, 'budget', p_mystic_chars_per_month,
        'chars', p_chars,
        'used', coalesce((select chars from public.premium_tts_usage
                           where user_id = p_user and period_start = v_period), 0),
        'reset_after', greatest(1, ceil(extract(epoch from (v_period + interval '1 month' - now())))::integer));
    else
      insert into public.premium_tts_free_calls (user_id, reference, period_start, chars)
      values (p_user, p_reference, v_period, p_chars);
      -- Older months are no longer needed.
      delete from public.premium_tts_free_calls where user_id = p_user and period_start < v_period;
      delete from public.premium_tts_usage where user_id = p_user and period_start < v_period;
      return jsonb_build_object('ok', true, 'charged', false, 'plan', v_plan, 'chars', p_chars,
                                'used', v_used, 'budget', p_mystic_chars_per_month);
    end if;
  else
    v_answer := public.spend_tokens_for(p_user, v_feature, p_chars, p_reference);
    if (v_answer ->> 'ok')::boolean then
      return v_answer || jsonb_build_object('charged', true, 'plan', v_plan, 'feature', v_feature);
    end if;
  end if;

  -- Refused after the quota counted this call: give the count back.
  update public.ai_usage set count = count - 1
   where user_id = p_user and endpoint = 'elevenlabs-tts-proxy'
     and window_start = date_trunc('hour', now()) and count > 0;
  return v_answer;
end
$$;

-- Gives a free (mystic) call's characters back when the upstream failed, once.
-- Returns {"ok":true, "replayed":false|true, "chars"} or {"ok":false, "reason":"no_such_call"}.
create function public.premium_tts_refund_chars(p_user uuid, p_reference text) returns jsonb
  language plpgsql
  security definer
  set search_path = public, pg_temp
  as $$
declare
  v_call public.premium_tts_free_calls;
begin
  perform 1 from public.user_profiles where id = p_user for update;
  select * into v_call from public.premium_tts_free_calls
   where user_id = p_user and reference = p_reference for update;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'no_such_call');
  end if;
  if v_call.refunded then
    return jsonb_build_object('ok', true, 'replayed', true, 'chars', v_call.chars);
  end if;
  update public.premium_tts_free_calls set refunded = true where user_id = p_user and reference = p_reference;
  update public.premium_tts_usage set chars = greatest(0, chars - v_call.chars)
   where user_id = p_user and period_start = v_call.period_start;
  return jsonb_build_object('ok', true, 'replayed', false, 'chars', v_call.chars);
end
$$;

revoke all on function public.premium_tts_charge(uuid, integer, text, text, integer, integer, integer)
  from public, anon, authenticated, service_role;
revoke all on function public.premium_tts_refund_chars(uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.premium_tts_charge(uuid, integer, text, text, integer, integer, integer) to service_role;
grant execute on function public.premium_tts_refund_chars(uuid, text) to service_role;
