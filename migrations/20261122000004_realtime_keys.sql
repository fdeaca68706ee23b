-- Realtime credentials.
-- Secret keys gain an encrypted copy of their secret (ChaCha20-Poly1305 under the operator's
-- master key), which HS256 token verification needs. Nullable: keys created before this
-- migration keep working on REST but cannot verify tokens.
ALTER TABLE api_keys ADD COLUMN secret_encrypted BYTEA;

-- Publishable keys are browser-safe WebSocket credentials, bound to origins and patterns.
CREATE TABLE publishable_keys (
    key              TEXT        NOT NULL,
    name             TEXT        NOT NULL,
    actions          TEXT[]      NOT NULL,
    channel_patterns TEXT[]      NOT NULL,
    allowed_origins  TEXT[]      NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ,
    revoked_at       TIMESTAMPTZ,
    CONSTRAINT publishable_keys_pkey PRIMARY KEY (key),
    CONSTRAINT publishable_keys_has_origin CHECK (cardinality(allowed_origins) > 0)
);
