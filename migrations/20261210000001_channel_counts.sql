-- How many channels each app has, active and archived, kept by a trigger: the channel list's
-- `total` without filters reads these rows instead of counting the channels (which costs time in
-- proportion to their number). Sixteen rows per app and state, chosen by the channel's id, so that
-- channels created at once rarely wait on each other's count.
CREATE TABLE channel_counts (
    app_id   BIGINT   NOT NULL,
    archived BOOLEAN  NOT NULL,
    shard    SMALLINT NOT NULL,
    count    BIGINT   NOT NULL,
    PRIMARY KEY (app_id, archived, shard)
);

-- Instances still running the previous version may create or archive channels meanwhile: held
-- off until the counts and the triggers exist, so that none is left out of the counts.
LOCK TABLE channels IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO channel_counts (app_id, archived, shard, count)
SELECT app_id, archived, (id % 16)::smallint, count(*)
FROM channels GROUP BY app_id, archived, id % 16;

-- One statement moves a channel out of its old count and into its new one, touching the rows in
-- key order, so that an archive and an unarchive at once never wait on each other crosswise.
CREATE FUNCTION channel_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO channel_counts AS c (app_id, archived, shard, count)
    SELECT app_id, archived, shard, sum(delta)
    FROM (
        SELECT OLD.app_id AS app_id, OLD.archived AS archived, (OLD.id % 16)::smallint AS shard,
               -1 AS delta
        WHERE TG_OP IN ('UPDATE', 'DELETE')
        UNION ALL
        SELECT NEW.app_id, NEW.archived, (NEW.id % 16)::smallint, 1
        WHERE TG_OP IN ('INSERT', 'UPDATE')
    ) moves
    GROUP BY app_id, archived, shard
    ORDER BY app_id, archived, shard
    ON CONFLICT (app_id, archived, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END;
$$;

CREATE TRIGGER channel_counts_insert_delete AFTER INSERT OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION channel_counts_follow();
-- Only a change of state or app moves a channel between counts; posting (which updates the row)
-- fires nothing.
CREATE TRIGGER channel_counts_update AFTER UPDATE OF archived, app_id ON channels
    FOR EACH ROW
    WHEN (OLD.archived IS DISTINCT FROM NEW.archived OR OLD.app_id IS DISTINCT FROM NEW.app_id)
    EXECUTE FUNCTION channel_counts_follow();
