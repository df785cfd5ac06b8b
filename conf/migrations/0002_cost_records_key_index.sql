-- Budget counters per key are rebuilt from the ledger by key id and time.
CREATE INDEX cost_records_key_ts ON cost_records (key_id, ts);
