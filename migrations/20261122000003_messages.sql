CREATE TABLE messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY,
    channel_id      BIGINT      NOT NULL,
    content         TEXT        NOT NULL,
    sender_type     TEXT        NOT NULL,
    pod_key         TEXT,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT messages_pkey PRIMARY KEY (id),
    CONSTRAINT messages_channel_id_fkey FOREIGN KEY (channel_id) REFERENCES channels (id),
    CONSTRAINT messages_sender_type_check CHECK (sender_type IN ('api', 'agent', 'system'))
);

-- History pages walk one channel by id in either direction.
CREATE INDEX messages_channel_id_id_idx ON messages (channel_id, id);

-- Retries that carry the same Idempotency-Key on the same channel store one message.
CREATE UNIQUE INDEX messages_idempotency_key ON messages (channel_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
