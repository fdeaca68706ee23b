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

INSERT INTO channel_counts (app_id, archived, shard, count)
SELECT app_id, archived, (id % 16)::smallint, count(*)
FROM channels GROUP BY app_id, archived, id % 16;

CREATE FUNCTION channel_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE channel_counts SET count = count - 1
        WHERE app_id = OLD.app_id AND archived = OLD.archived AND shard = OLD.id % 16;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO channel_counts (app_id, archived, shard, count)
        VALUES (NEW.app_id, NEW.archived, NEW.id % 16, 1)
        ON CONFLICT (app_id, archived, shard) DO UPDATE SET count = channel_counts.count + 1;
    END IF;
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
