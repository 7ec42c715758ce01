-- Migration 0008: releases. A release opens a set of courses in one mode: `fcfs` (grabs as
-- ever, from opens_at), `window` (ranked wishes entered from opens_at for window_s seconds, then
-- drawn by the service) or `lottery` (wishes from opens_at to closes_at, drawn when an operator
-- asks). A course belongs to at most one release. One entry per resident and release; the
-- frozen entries file, the results file and the draw's record are kept byte for byte, so that
-- what was published can be re-checked (`booking verify-draw`). Re-runnable.
CREATE TABLE IF NOT EXISTS releases (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title             text NOT NULL,
    mode              text NOT NULL,
    term              text NOT NULL,
    term_cap          integer,  -- seats per resident in the term; NULL: no cap
    opens_at          timestamptz NOT NULL,
    closes_at         timestamptz,  -- entries close (window: opens_at + window_s); fcfs: NULL
    window_s          integer,
    claim_hold_s      integer,
    general_sale_at   timestamptz,  -- lottery: leftovers first-come from then (NULL: the draw)
    max_wishes        integer,
    beacon            text,
    beacon_commitment text,
    tiers             jsonb NOT NULL DEFAULT '[]',  -- [{"name": ..., "opens_at": ...}]
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT releases_mode_known CHECK (mode IN ('fcfs', 'window', 'lottery')),
    CONSTRAINT releases_term_cap_range CHECK (term_cap IS NULL OR term_cap BETWEEN 1 AND 20),
    CONSTRAINT releases_draws_close CHECK ((mode = 'fcfs') = (closes_at IS NULL)),
    CONSTRAINT releases_closes_after_opening CHECK (closes_at IS NULL OR closes_at > opens_at)
);
CREATE INDEX IF NOT EXISTS releases_by_term ON releases (term);
-- Draw releases whose entries have closed but that are not drawn yet (the closer's round).
CREATE INDEX IF NOT EXISTS releases_by_close ON releases (closes_at) WHERE closes_at IS NOT NULL;

ALTER TABLE courses ADD COLUMN IF NOT EXISTS release_id bigint REFERENCES releases (id);
CREATE INDEX IF NOT EXISTS courses_by_release ON courses (release_id)
    WHERE release_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS release_entries (
    release_id  bigint NOT NULL REFERENCES releases (id),
    resident_id text NOT NULL,
    entry_id    text NOT NULL UNIQUE,  -- the resident's receipt; the same when replaced
    tier        text,
    wishes      bigint[] NOT NULL,  -- course ids, best first
    ticket      text,   -- after the draw: the entry's ticket
    results     jsonb,  -- after the draw: per wish, its outcome (and booking or position)
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release_id, resident_id),
    CONSTRAINT release_entries_wishes_given CHECK (cardinality(wishes) BETWEEN 1 AND 10)
);

-- A draw release once its entries closed: the frozen entries file first, then the draw.
CREATE TABLE IF NOT EXISTS release_draws (
    release_id   bigint PRIMARY KEY REFERENCES releases (id),
    frozen_at    timestamptz NOT NULL DEFAULT now(),
    entries_file bytea NOT NULL,
    seats        jsonb NOT NULL,  -- [{"course_id": ..., "seats": ...}]: capacity at close
    results_file bytea,
    record       json,  -- the draw's record as GET .../draw answers it (keys in order)
    drawn_at     timestamptz,
    CONSTRAINT release_draws_drawn_whole CHECK (
        (drawn_at IS NULL) = (results_file IS NULL) AND (drawn_at IS NULL) = (record IS NULL))
);
