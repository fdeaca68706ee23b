-- Per-key rate limits; NULL means the server's defaults (--rate-limit, --rate-burst).
ALTER TABLE api_keys
    ADD COLUMN rate_limit INTEGER,
    ADD COLUMN rate_burst INTEGER,
    ADD CONSTRAINT api_keys_rate_limit_positive CHECK (rate_limit > 0),
    ADD CONSTRAINT api_keys_rate_burst_positive CHECK (rate_burst > 0);
