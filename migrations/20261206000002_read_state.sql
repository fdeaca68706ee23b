-- Read state (SPEC §4b): how far each reader (a person, a pod) has read each persistent
-- channel. It only moves forward, and is written only by `PUT /v1/channels/{id}/read`.
CREATE TABLE read_states (
    channel_id   BIGINT      NOT NULL,
    reader       TEXT        NOT NULL,
    last_read_id BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT read_states_pkey PRIMARY KEY (channel_id, reader),
    CONSTRAINT read_states_channel_id_fkey FOREIGN KEY (channel_id) REFERENCES channels (id)
);
