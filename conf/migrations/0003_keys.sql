-- Managed gateway keys: org → team → app → keys. Only a key's SHA-256 is stored; the secret is shown
-- once, when the key is issued. Every change to a key is announced with NOTIFY sluice_keys, '<id>'
-- so every instance updates its cache at once.
CREATE TABLE orgs (
    id         text PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE teams (
    id         text PRIMARY KEY,
    org_id     text        NOT NULL REFERENCES orgs (id),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE apps (
    id         text PRIMARY KEY,
    team_id    text        NOT NULL REFERENCES teams (id),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             text PRIMARY KEY,
    app_id         text        NOT NULL REFERENCES apps (id),
    hash           bytea       NOT NULL UNIQUE,
    -- What may be shown of the key: `sk-sluice-<id>-…`.
    display        text        NOT NULL,
    name           text,
    user_id        text,
    models         text[],
    regions        text[],
    tags           text[]      NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    -- Set on the old key when it is rotated.
    replaced_by    text REFERENCES api_keys (id),
    -- Days-before-expiry reminders already sent (14, 7, 1).
    reminders_sent integer[]   NOT NULL DEFAULT '{}'
);

CREATE INDEX api_keys_app ON api_keys (app_id);
CREATE INDEX api_keys_expiry ON api_keys (expires_at) WHERE revoked_at IS NULL;
