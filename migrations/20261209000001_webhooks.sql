-- Webhooks (SPEC §9): events sent to HTTP receivers, signed as Standard Webhooks describe, at
-- least once. New tables and triggers only.
--
-- An event is written to `webhook_events` (the outbox) in the transaction of what caused it, and
-- only when the app has an enabled webhook that wants its type: an app without webhooks pays one
-- index probe per event. A dispatcher then writes one `webhook_deliveries` row per webhook whose
-- `channels` patterns match, and senders lease those rows, post them, and record each attempt.
CREATE TABLE webhooks (
    id                    TEXT        NOT NULL,
    app_id                BIGINT      NOT NULL,
    url                   TEXT        NOT NULL,
    events                TEXT[]      NOT NULL,
    channels              TEXT[]      NOT NULL,
    description           TEXT,
    enabled               BOOLEAN     NOT NULL DEFAULT true,
    -- The signing secrets under the master key (the webhook's id is the associated data); the
    -- previous one keeps signing beside the current one until `previous_secret_until`.
    secret                BYTEA       NOT NULL,
    previous_secret       BYTEA,
    previous_secret_until TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_pkey PRIMARY KEY (id),
    CONSTRAINT webhooks_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps (id)
);

CREATE INDEX webhooks_app_id ON webhooks (app_id) WHERE enabled;

-- `channel` is the name a webhook's patterns match: a persistent channel's id in decimal, a
-- realtime channel's name. `message.created` carries `message_id` and reads the stored message
-- (which never changes) when it is sent; every other type carries its `data` as of the event.
-- `dedupe` makes an event that several instances observe (presence with Redis) one row.
CREATE TABLE webhook_events (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY,
    app_id     BIGINT      NOT NULL,
    type       TEXT        NOT NULL,
    channel    TEXT        NOT NULL,
    message_id BIGINT,
    data       JSONB,
    dedupe     TEXT,
    dispatched BOOLEAN     NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_events_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_events_dedupe_key UNIQUE (dedupe)
);

CREATE INDEX webhook_events_undispatched ON webhook_events (id) WHERE NOT dispatched;
CREATE INDEX webhook_events_created_at ON webhook_events (created_at);

-- One event for one webhook. `ordered` (message.created) rows of one webhook and channel go out
-- in event id order. `lease` is drawn at every lease from a sequence, so a sender records an
-- attempt only under the lease it was given.
CREATE SEQUENCE webhook_leases_seq;

CREATE TABLE webhook_deliveries (
    webhook_id       TEXT        NOT NULL,
    event_id         BIGINT      NOT NULL,
    channel          TEXT        NOT NULL,
    ordered          BOOLEAN     NOT NULL,
    state            TEXT        NOT NULL DEFAULT 'pending',
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    first_attempt_at TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    lease            BIGINT,
    leased_until     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (webhook_id, event_id),
    CONSTRAINT webhook_deliveries_webhook_id_fkey FOREIGN KEY (webhook_id)
        REFERENCES webhooks (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_event_id_fkey FOREIGN KEY (event_id)
        REFERENCES webhook_events (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'failed'))
) WITH (fillfactor = 80); -- room on each page, so a lease (no indexed column) is a HOT update

CREATE INDEX webhook_deliveries_lane ON webhook_deliveries (webhook_id, channel, event_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event_id ON webhook_deliveries (event_id);

-- `message.created`, in the statement that stores the message (which holds the channel's row, so
-- a channel's events are numbered in message id order).
CREATE FUNCTION webhook_message_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (app_id, type, channel, message_id)
    SELECT c.app_id, 'message.created', c.id::text, NEW.id
    FROM channels c
    WHERE c.id = NEW.channel_id
      AND EXISTS (SELECT 1 FROM webhooks w
                  WHERE w.app_id = c.app_id AND w.enabled AND 'message.created' = ANY (w.events));
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_message_created AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION webhook_message_created();

-- `consumer.dead`, in the statement that sets a consumer group's message aside.
CREATE FUNCTION webhook_consumer_dead() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (app_id, type, channel, data)
    SELECT ch.app_id, 'consumer.dead', ch.id::text,
           jsonb_build_object('channel_id', ch.id, 'consumer', g.name,
                              'message_id', NEW.message_id, 'attempts', NEW.attempts)
    FROM consumers g JOIN channels ch ON ch.id = g.channel_id
    WHERE g.id = NEW.consumer_id
      AND EXISTS (SELECT 1 FROM webhooks w
                  WHERE w.app_id = ch.app_id AND w.enabled AND 'consumer.dead' = ANY (w.events));
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_consumer_dead AFTER UPDATE OF dead ON consumer_deliveries
    FOR EACH ROW WHEN (NEW.dead AND NOT OLD.dead) EXECUTE FUNCTION webhook_consumer_dead();

-- Deliveries and events leave their partial indexes ("pending", "not dispatched") as they are
-- sent, and every round of every instance reads those indexes from their start: vacuum them
-- after 1,000 changes or 2 % of the table rather than the default 20 %.
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.02,
                                    autovacuum_vacuum_threshold = 1000);
ALTER TABLE webhook_events SET (autovacuum_vacuum_scale_factor = 0.02,
                                autovacuum_vacuum_threshold = 1000);
