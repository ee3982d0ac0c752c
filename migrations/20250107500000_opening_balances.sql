-- Opening balances: the ledger row that carries a balance a user already had when a live
-- database was adopted (`libero adopt`, docs/adopt.md).
--
-- The ledger is the only record of how a balance came to be, and `tokens == sum(ledger)`
-- must hold from the first second after adoption. The old app kept only the balance, so
-- each adopted user gets, after a 'purchase' row for each past token order that was paid
-- (so neither a late webhook nor reconcile credits it again), one 'opening_balance' row
-- with whatever the balance holds beyond those purchases; reference 'adopt'. It is
-- negative when the user had already spent part of what they bought, which is why it is
-- the one reason whose sign is not fixed. No function writes it: only the adoption does.

alter domain public.ledger_reason drop constraint ledger_reason_check;
alter domain public.ledger_reason add constraint ledger_reason_check check (value in (
  'session_complete', 'level_up', 'streak_bonus', 'purchase', 'refund', 'spend', 'spend_refund',
  'dispute_won',
  'opening_balance' -- the balance a user had when the database was adopted; reference 'adopt'
));

-- The sign rule of 20250101000100_economy_schema.sql (debits are spends and refunds, and
-- nothing else), with the opening balance free to go either way. That check was created
-- without a name, so it is found by what it says.
do $$
declare
  c record;
begin
  for c in
    select conname from pg_constraint
     where conrelid = 'public.token_ledger'::regclass and contype = 'c'
       and pg_get_constraintdef(oid) like '%delta%< 0%'
  loop
    execute format('alter table public.token_ledger drop constraint %I', c.conname);
  end loop;
end
$$;

alter table public.token_ledger
  add constraint token_ledger_debit_reasons_check
    check (reason = 'opening_balance' or (reason in ('spend', 'refund')) = (delta < 0));
