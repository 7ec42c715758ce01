-- Migration 0008: releases. A release opens a set of courses in one mode: `fcfs` (grabs as
-- ever, from opens_at), `window` (ranked wishes entered from opens_at for window_s seconds, then
-- drawn by the service) or `lottery` (wishes from opens_at to closes_at, drawn when an operator
-- asks). A course belongs to at most one release. One entry per resident and release; the
-- frozen entries file, the results file and the draw's record are kept byte for byte, so that
-- what was published can be re-checked (`booking verify-draw`). A term's cap is kept by a
-- trigger on bookings (the backstop behind the gate's quota). Re-runnable.
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

-- The term cap, Postgres's side (the backstop whatever the gate said): after every INSERT of
-- bookings, no resident holds more active bookings in the courses of a term's releases than the
-- term's cap. Each (resident, term) pair is locked (an advisory lock, in one order) before it is
-- counted, so two transactions of one resident count one after the other; updates never make a
-- booking active again, so inserts are all there is to check.
CREATE OR REPLACE FUNCTION bookings_keep_term_cap() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pair record;
    held integer;
BEGIN
    FOR pair IN
        SELECT DISTINCT n.resident_id, r.term, r.term_cap
          FROM new_rows n JOIN courses c ON c.id = n.course_id
          JOIN releases r ON r.id = c.release_id
         WHERE booking_active(n.status) AND r.term_cap IS NOT NULL
         ORDER BY n.resident_id, r.term
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(pair.resident_id || '|' || pair.term, 0));
        SELECT count(*) INTO held
          FROM bookings b JOIN courses c ON c.id = b.course_id
          JOIN releases r ON r.id = c.release_id
         WHERE b.resident_id = pair.resident_id AND r.term = pair.term
           AND booking_active(b.status);
        IF held > pair.term_cap THEN
            RAISE EXCEPTION 'resident % would hold % seats in term % (cap %)',
                pair.resident_id, held, pair.term, pair.term_cap
                USING ERRCODE = 'check_violation', CONSTRAINT = 'bookings_term_cap';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bookings_term_cap_kept AFTER INSERT ON bookings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bookings_keep_term_cap();
