CREATE TABLE channels (
    id            BIGINT GENERATED ALWAYS AS IDENTITY,
    name          TEXT        NOT NULL,
    description   TEXT,
    repository_id BIGINT,
    ticket_slug   TEXT,
    document      TEXT,
    archived      BOOLEAN     NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT channels_pkey PRIMARY KEY (id),
    CONSTRAINT channels_repository_id_positive CHECK (repository_id > 0)
);

-- Names are unique among channels that are not archived: archiving frees the name.
CREATE UNIQUE INDEX channels_active_name_key ON channels (name) WHERE NOT archived;

-- The list endpoint orders by activity and filters by repository or ticket.
CREATE INDEX channels_updated_at_idx ON channels (updated_at DESC, id DESC);
CREATE INDEX channels_repository_id_idx ON channels (repository_id, updated_at DESC, id DESC)
    WHERE repository_id IS NOT NULL;
CREATE INDEX channels_ticket_slug_idx ON channels (ticket_slug, updated_at DESC, id DESC)
    WHERE ticket_slug IS NOT NULL;
