-- Day partitions of cost_records and audit_log are created through this function, which runs with
-- its owner's rights (SECURITY DEFINER). The gateway can then run as a role that may only INSERT
-- and SELECT on those tables (and EXECUTE this), never UPDATE, DELETE, TRUNCATE or ALTER them:
-- `sluice db grant ROLE` gives exactly that.
CREATE FUNCTION sluice_create_partition(parent text, day date) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    IF parent NOT IN ('cost_records', 'audit_log') THEN
        RAISE EXCEPTION 'sluice_create_partition: % is not a partitioned table of Sluice', parent;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
        parent || '_' || to_char(day, 'YYYYMMDD'), parent, day::text, (day + 1)::text);
END
$$;

REVOKE ALL ON FUNCTION sluice_create_partition(text, date) FROM PUBLIC;
