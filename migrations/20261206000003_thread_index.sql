-- no-transaction
-- The replies of a thread in id order (its first message has thread_id NULL: it is its own
-- thread). Built concurrently, so that instances still running keep posting and reading while it
-- builds during a rolling deploy.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_thread_idx ON messages (channel_id, thread_id, id)
    WHERE thread_id IS NOT NULL;
