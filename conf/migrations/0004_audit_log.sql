-- The audit trail: one row per API request and per admin action, append-only and hash-chained per
-- UTC day (each row's hash covers its content and the previous row's hash; `sluice audit verify`
-- walks the chains). Partitions are created by the gateway as days arrive. UPDATE, DELETE and
-- TRUNCATE are refused by triggers; in production, also give the gateway's role INSERT and SELECT
-- only:  GRANT SELECT, INSERT ON audit_log TO sluice_gateway;
CREATE TABLE audit_log (
    day         date    NOT NULL,
    seq         bigint  NOT NULL,
    ts_us       bigint  NOT NULL,
    record_id   text    NOT NULL,
    action      text    NOT NULL,
    request_id  text,
    org         text,
    team        text,
    app         text,
    key_id      text,
    "user"      text,
    model       text,
    target      text,
    region      text,
    status      integer NOT NULL,
    pii         text    NOT NULL,
    tokens_in   bigint  NOT NULL,
    tokens_out  bigint  NOT NULL,
    cost_micros bigint  NOT NULL,
    detail      text,
    prev_hash   text    NOT NULL,
    hash        text    NOT NULL,
    PRIMARY KEY (day, seq),
    UNIQUE (day, record_id)
) PARTITION BY RANGE (day);

CREATE FUNCTION sluice_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION sluice_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_audit_append_only();
