-- What a dashboard shows per channel without reading its history: how many messages it has and
-- the last one (its first 200 characters). The statement that stores a message keeps them current.
ALTER TABLE channels
    ADD COLUMN message_count    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_message_id  BIGINT,
    ADD COLUMN last_message_at  TIMESTAMPTZ,
    ADD COLUMN last_sender_type TEXT,
    ADD COLUMN last_pod_key     TEXT,
    ADD COLUMN last_content     TEXT;

WITH activity AS (
    SELECT channel_id, count(*) AS messages, max(id) AS last_id
    FROM messages GROUP BY channel_id
)
UPDATE channels c SET
    message_count    = activity.messages,
    last_message_id  = m.id,
    last_message_at  = m.created_at,
    last_sender_type = m.sender_type,
    last_pod_key     = m.pod_key,
    last_content     = left(m.content, 200)
FROM activity JOIN messages m ON m.id = activity.last_id
WHERE c.id = activity.channel_id;

-- `q=` finds names containing a text, case-insensitively (`ILIKE '%text%'`). A B-tree cannot
-- serve a pattern with a leading wildcard; a trigram GIN index can, for any text of 3 or more
-- characters, and stays small for names of at most 100 characters.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX channels_name_trgm_idx ON channels USING gin (name gin_trgm_ops);

-- The other list orders (`sort=created_at`, `sort=name`), either direction, with the id as the
-- tie-break that keyset paging needs.
CREATE INDEX channels_created_at_idx ON channels (created_at, id);
CREATE INDEX channels_name_idx ON channels (name, id);
