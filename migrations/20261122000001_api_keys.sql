-- Secret API keys. The secret itself is never stored: only its SHA-256 digest,
-- which is enough because secrets are 32 random base62 characters (~190 bits).
CREATE TABLE api_keys (
    key_id           TEXT        NOT NULL,
    name             TEXT        NOT NULL,
    secret_sha256    BYTEA       NOT NULL,
    scopes           TEXT[]      NOT NULL,
    channel_patterns TEXT[]      NOT NULL DEFAULT ARRAY['**'],
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ,
    revoked_at       TIMESTAMPTZ,
    CONSTRAINT api_keys_pkey PRIMARY KEY (key_id),
    CONSTRAINT api_keys_secret_sha256_length CHECK (octet_length(secret_sha256) = 32)
);
