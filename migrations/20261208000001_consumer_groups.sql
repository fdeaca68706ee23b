-- Consumer groups (SPEC §8): each message of a channel handed to one member at a time, with
-- leases, acknowledgements, redelivery and dead letters. New tables only.
--
-- A group reads its channel in id order through `frontier`: every message of the channel up to
-- it has been handed out at least once (or skipped by the group's `mentions` filter). Within one
-- channel ids become visible in increasing order (see messages/db.rs), so a frontier that only
-- moves forward skips nothing. A message holds a row in `consumer_deliveries` only from its first
-- claim until it is acked, so a claim's cost depends on the work in hand, not on the channel's
-- history.
CREATE TABLE consumers (
    id             BIGINT      GENERATED ALWAYS AS IDENTITY,
    channel_id     BIGINT      NOT NULL,
    name           TEXT        NOT NULL,
    -- `start` as it was asked for: "latest", "earliest" or a message id.
    start          TEXT        NOT NULL,
    ack_wait_ms    BIGINT      NOT NULL,
    max_deliveries INTEGER     NOT NULL,
    mentions       TEXT,
    frontier       BIGINT      NOT NULL,
    -- Messages of the channel up to the first frontier, and those past it handed out since: with
    -- the channel's `message_count`, what is left to hand out, without counting rows (groups
    -- without `mentions`).
    skipped        BIGINT      NOT NULL,
    taken          BIGINT      NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT consumers_pkey PRIMARY KEY (id),
    CONSTRAINT consumers_channel_id_fkey FOREIGN KEY (channel_id) REFERENCES channels (id),
    CONSTRAINT consumers_channel_id_name_key UNIQUE (channel_id, name),
    CONSTRAINT consumers_name_format CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    CONSTRAINT consumers_ack_wait_range CHECK (ack_wait_ms BETWEEN 1000 AND 43200000),
    CONSTRAINT consumers_max_deliveries_range CHECK (max_deliveries BETWEEN 1 AND 100)
);

-- Acknowledged messages, counted apart from `consumers` so that acks never wait on the lock a
-- claim holds on the group's row.
CREATE TABLE consumer_counts (
    consumer_id BIGINT NOT NULL,
    acked       BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT consumer_counts_pkey PRIMARY KEY (consumer_id),
    CONSTRAINT consumer_counts_consumer_id_fkey FOREIGN KEY (consumer_id)
        REFERENCES consumers (id) ON DELETE CASCADE
);

-- A message handed out and not yet acked. `lease` changes at every claim (drawn from a
-- sequence), so an ack names one lease and can never apply to a later one. `due_at` is when the
-- lease expires (`leased`) or when a nacked message may be claimed again (NOT `leased`).
CREATE TABLE consumer_deliveries (
    consumer_id BIGINT      NOT NULL,
    message_id  BIGINT      NOT NULL,
    attempts    INTEGER     NOT NULL,
    lease       BIGINT      NOT NULL,
    member      TEXT        NOT NULL,
    leased      BOOLEAN     NOT NULL,
    dead        BOOLEAN     NOT NULL DEFAULT false,
    due_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT consumer_deliveries_pkey PRIMARY KEY (consumer_id, message_id),
    CONSTRAINT consumer_deliveries_consumer_id_fkey FOREIGN KEY (consumer_id)
        REFERENCES consumers (id) ON DELETE CASCADE
);

-- What a claim may take back: live rows in id order, or those due by now.
CREATE INDEX consumer_deliveries_live_idx ON consumer_deliveries (consumer_id, message_id)
    WHERE NOT dead;
CREATE INDEX consumer_deliveries_due_idx ON consumer_deliveries (consumer_id, due_at)
    WHERE NOT dead;

CREATE SEQUENCE consumer_leases_seq;

-- Members that claimed lately (shown for the last 5 minutes).
CREATE TABLE consumer_members (
    consumer_id BIGINT      NOT NULL,
    member      TEXT        NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT consumer_members_pkey PRIMARY KEY (consumer_id, member),
    CONSTRAINT consumer_members_consumer_id_fkey FOREIGN KEY (consumer_id)
        REFERENCES consumers (id) ON DELETE CASCADE
);

-- Members seen lately, and those to forget.
CREATE INDEX consumer_members_last_seen_idx ON consumer_members (consumer_id, last_seen);
