-- Addressed messages (SPEC §4 "Optional structured fields"): mentions, structured metadata,
-- replies and threads. Additive only, so binaries that predate it keep working during a rolling
-- deploy, and no existing row is rewritten (a column with a constant default is metadata-only):
-- thread_id is set on replies only (the thread's first message); NULL reads as the message's own id.
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

-- The replies of a thread in id order (its first message has thread_id NULL: it is its own thread).
CREATE INDEX messages_thread_idx ON messages (channel_id, thread_id, id)
    WHERE thread_id IS NOT NULL;
