-- The audit row of a request carries the SHA-256 of the body the client sent, and, when
-- `[audit] content = true`, the request as it was forwarded (after PII redaction). Both are part of
-- the row's hash when present; rows written before this migration hash exactly as they did.
ALTER TABLE audit_log ADD COLUMN request_hash text, ADD COLUMN content text;
