-- Addressed messages (SPEC §4 "Optional structured fields"): mentions, structured metadata,
-- replies and threads. Additive only, so binaries that predate it keep working during a rolling
-- deploy, and no existing row is rewritten (a column with a constant default is metadata-only):
-- thread_id is set on replies only (the thread's first message); NULL reads as the message's own id.
SET LOCAL lock_timeout = '5s';
ALTER TABLE messages
    ADD COLUMN mentions  TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata  JSONB,
    ADD COLUMN reply_to  BIGINT,
    ADD COLUMN thread_id BIGINT;

-- Who a message mentions, one row per name, written by the statement that stores the message:
-- a page of the messages that mention one name walks this key in id order, however rare the
-- name is in a long channel.
CREATE TABLE message_mentions (
    channel_id BIGINT NOT NULL,
    name       TEXT   NOT NULL,
    message_id BIGINT NOT NULL,
    CONSTRAINT message_mentions_pkey PRIMARY KEY (channel_id, name, message_id)
);

-- The index of threads is built by the next migration, concurrently: this one holds the table's
-- lock only for the metadata changes above.
