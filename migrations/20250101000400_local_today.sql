-- The user's local day, which streaks and daily caps are counted in. complete_session
-- itself is in 20250106000000_session_integrity.sql.

-- Today's date in the given IANA time zone, or in UTC when the name is missing or is not
-- a zone Postgres knows. Only zone names are accepted: AT TIME ZONE would also take
-- POSIX offsets such as 'UTC+5', whose sign is the reverse of what anyone means.
create function public.local_today(p_timezone text) returns date
  language plpgsql
  stable
  set search_path = public, pg_temp
  as $$
begin
  if p_timezone ~ '^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_+-]+)*$' then
    begin
      return (now() at time zone p_timezone)::date;
    exception when invalid_parameter_value then
      -- 'time zone "..." not recognized': fall through to UTC.
    end;
  end if;
  return (now() at time zone 'UTC')::date;
end
$$;

revoke all on function public.local_today(text) from public, anon, authenticated, service_role;
