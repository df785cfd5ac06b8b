-- The cost ledger: one row per API request, partitioned by UTC day (partitions are created by the
-- gateway as days arrive). The primary key is the record's own id plus its time, so replays from
-- the spool are idempotent (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE cost_records (
    id                text        NOT NULL,
    request_id        text        NOT NULL,
    ts                timestamptz NOT NULL,
    org               text,
    team              text,
    app               text,
    key_id            text,
    "user"            text,
    endpoint          text        NOT NULL,
    model             text,
    provider          text,
    target            text,
    upstream_model    text,
    region            text,
    status            smallint    NOT NULL,
    error             text,
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    cached_tokens     bigint      NOT NULL,
    reasoning_tokens  bigint      NOT NULL,
    usage_estimated   boolean     NOT NULL,
    cost_micros       bigint      NOT NULL,
    latency_us        bigint      NOT NULL,
    attempts          integer     NOT NULL,
    stream            boolean     NOT NULL,
    cache             text        NOT NULL,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX cost_records_team_ts ON cost_records (team, ts);
