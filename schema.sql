-- The whole booking database as it is today, for a fresh database. Safe to apply twice: every
-- statement is IF NOT EXISTS or OR REPLACE. Postgres is the ledger and the backstop: the
-- constraints below hold even if the Redis gate were bypassed.
--
-- Changes go in a new numbered file of booking/core/migrations/ AND here: `booking db upgrade`
-- (and `booking serve`) applies this file to an empty database and the missing migrations to any
-- other; tests/test_migrations.py proves both roads give the same schema.

-- Active = confirmed or held: both hold a seat. A booking of a paid course starts `held` until
-- its payment arrives or `expires_at` passes (then `expired`); a free course confirms at once.
-- Every rule about active bookings and holds uses these functions, never its own spelling.
-- (Simple SQL functions: the planner inlines them, so index predicates still match.)
CREATE OR REPLACE FUNCTION booking_active(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('confirmed', 'held')
$$;
-- How long a new booking of a course is held: 0 for a free course, hold_minutes for a paid one.
CREATE OR REPLACE FUNCTION course_hold_s(price_cents integer, hold_minutes integer)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN price_cents > 0 THEN hold_minutes * 60 ELSE 0 END
$$;
-- A new booking's status and expiry, from its course's hold seconds (course_hold_s).
CREATE OR REPLACE FUNCTION new_booking_status(hold_s integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN hold_s > 0 THEN 'held' ELSE 'confirmed' END
$$;
CREATE OR REPLACE FUNCTION new_booking_expiry(hold_s integer) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN hold_s > 0 THEN now() + make_interval(secs => hold_s) END
$$;

CREATE TABLE IF NOT EXISTS venues (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    district   text NOT NULL,
    address    text NOT NULL,
    lat        double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- "Near me": a bounding box on (lat, lon) narrows the venues before the haversine distance.
CREATE INDEX IF NOT EXISTS venues_by_place ON venues (lat, lon);

CREATE TABLE IF NOT EXISTS courses (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    venue_id        bigint NOT NULL REFERENCES venues (id),
    title           text NOT NULL,
    category        text NOT NULL,
    teacher         text NOT NULL,
    description     text NOT NULL DEFAULT '',
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    capacity        integer NOT NULL,
    price_cents     integer NOT NULL DEFAULT 0,
    sales_open_at   timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'published',
    -- kept by the triggers below; never written by the application
    active_bookings integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    hold_minutes    integer NOT NULL DEFAULT 10,  -- how long a hold of a paid course lasts
    cancel_deadline timestamptz,  -- NULL: starts_at
    CONSTRAINT courses_capacity_range CHECK (capacity BETWEEN 0 AND 100000),
    CONSTRAINT courses_price_range CHECK (price_cents BETWEEN 0 AND 100000000),
    CONSTRAINT courses_status_known CHECK (status IN ('published', 'cancelled')),
    CONSTRAINT courses_ends_after_start CHECK (ends_at > starts_at),
    CONSTRAINT courses_sales_open_before_start CHECK (sales_open_at <= starts_at),
    CONSTRAINT courses_not_oversold CHECK (active_bookings <= capacity),
    CONSTRAINT courses_active_not_negative CHECK (active_bookings >= 0),
    CONSTRAINT courses_hold_minutes_range CHECK (hold_minutes BETWEEN 1 AND 1440)
);
CREATE INDEX IF NOT EXISTS courses_by_venue ON courses (venue_id);
CREATE INDEX IF NOT EXISTS courses_by_category ON courses (category);

CREATE TABLE IF NOT EXISTS bookings (
    id           uuid PRIMARY KEY,
    course_id    bigint NOT NULL REFERENCES courses (id),
    resident_id  text NOT NULL,
    status       text NOT NULL DEFAULT 'confirmed',
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,
    expires_at   timestamptz,
    paid_at      timestamptz,
    CONSTRAINT bookings_status_known
        CHECK (status IN ('confirmed', 'held', 'cancelled', 'expired')),
    CONSTRAINT bookings_held_expires CHECK (status <> 'held' OR expires_at IS NOT NULL)
);
-- No duplicates: at most one active booking per (course, resident).
CREATE UNIQUE INDEX IF NOT EXISTS bookings_one_active_per_resident
    ON bookings (course_id, resident_id) WHERE booking_active(status);
CREATE INDEX IF NOT EXISTS bookings_by_resident ON bookings (resident_id, created_at);
CREATE INDEX IF NOT EXISTS bookings_held_by_expiry ON bookings (expires_at) WHERE status = 'held';

-- No oversell: courses.active_bookings follows the bookings table statement by statement, and
-- the courses_not_oversold check refuses any statement that would pass capacity. Course rows are
-- updated in id order, so concurrent multi-course batches never deadlock; a transaction of
-- several statements (a swap, a cancel) locks its course rows in id order before it changes a
-- booking (booking/bookings.py, LOCK_COURSES).
CREATE OR REPLACE FUNCTION bookings_apply_active_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids           bigint[];
    deltas        integer[];
    course_status text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, count(*)::integer AS n FROM new_rows
                 WHERE booking_active(status) GROUP BY course_id) per_course;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, sum(d)::integer AS n FROM (
                    SELECT course_id, 1 AS d FROM new_rows WHERE booking_active(status)
                    UNION ALL
                    SELECT course_id, -1 FROM old_rows WHERE booking_active(status)
                ) changes GROUP BY course_id HAVING sum(d) <> 0) per_course;
    ELSE
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, -count(*)::integer AS n FROM old_rows
                 WHERE booking_active(status) GROUP BY course_id) per_course;
    END IF;
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        -- After waiting for the row, UPDATE sees the latest status: a grab that raced the
        -- course's cancellation is refused here, not left as a booking of a cancelled course.
        UPDATE courses SET active_bookings = active_bookings + deltas[i] WHERE id = ids[i]
            RETURNING status INTO course_status;
        IF deltas[i] > 0 AND course_status = 'cancelled' THEN
            RAISE EXCEPTION 'course % is cancelled', ids[i]
                USING ERRCODE = 'check_violation', CONSTRAINT = 'courses_cancelled_take_no_bookings';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER bookings_count_inserted AFTER INSERT ON bookings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bookings_apply_active_delta();
CREATE OR REPLACE TRIGGER bookings_count_updated AFTER UPDATE ON bookings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bookings_apply_active_delta();
CREATE OR REPLACE TRIGGER bookings_count_deleted AFTER DELETE ON bookings
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bookings_apply_active_delta();

-- The waitlist: `id` is the order of arrival. A freed seat goes to the first `waiting` row (the
-- gate pops it from its own copy in Redis in the step that frees the seat); the promotion writes
-- the booking, marks the row `promoted` and adds an outbox row in one transaction.
CREATE TABLE IF NOT EXISTS waitlist (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    course_id   bigint NOT NULL REFERENCES courses (id),
    resident_id text NOT NULL,
    status      text NOT NULL DEFAULT 'waiting',
    booking_id  uuid,  -- the booking a promotion gave
    joined_at   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz,
    CONSTRAINT waitlist_status_known CHECK (status IN ('waiting', 'promoted', 'left', 'cleared'))
);
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_place_per_resident
    ON waitlist (course_id, resident_id) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS waitlist_queue ON waitlist (course_id, id) WHERE status = 'waiting';
-- A resident's places ("my bookings").
CREATE INDEX IF NOT EXISTS waitlist_by_resident ON waitlist (resident_id) WHERE status = 'waiting';

-- Payment callbacks, one row per provider reference: the same callback twice finds its row and
-- gets its answer again (refund_due once the booking it paid has ended). `outcome`: confirmed, refund_due (paid too late or twice, or the paid
-- booking ended without its lesson: booking/ledger/refunds.py, in the transaction that ended
-- it) or amount_mismatch.
CREATE TABLE IF NOT EXISTS payments (
    provider_ref text PRIMARY KEY,
    booking_id   uuid NOT NULL REFERENCES bookings (id),
    amount_cents bigint NOT NULL,
    outcome      text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_outcome_known
        CHECK (outcome IN ('confirmed', 'refund_due', 'amount_mismatch'))
);
CREATE INDEX IF NOT EXISTS payments_refunds_due ON payments (received_at)
    WHERE outcome = 'refund_due';
-- Ending a paid booking owes its payment back: found by booking (booking/ledger/refunds.py).
CREATE INDEX IF NOT EXISTS payments_by_booking ON payments (booking_id);

-- Notifications to residents, written in the transaction that caused them and delivered by the
-- outbox dispatcher (booking/outbox.py); `sent_at` is set once the receiver accepted it.
CREATE TABLE IF NOT EXISTS outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL,
    resident_id     text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at, id) WHERE sent_at IS NULL;

-- Residents and how they sign in (booking/signin.py). A resident's id, random and never the
-- phone, is what tokens, bookings and logs carry; the phone finds the resident again at the
-- next sign-in and is where codes go.
CREATE TABLE IF NOT EXISTS residents (
    id         text PRIMARY KEY,
    phone      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT residents_phone_unique UNIQUE (phone),
    CONSTRAINT residents_phone_mobile CHECK (phone ~ '^1[3-9][0-9]{9}$')
);
-- Sign-in codes, one row per phone (a new code replaces the last one, at most one a minute):
-- HMAC-SHA256 of phone and code, never the code. `resident_id` is the phone's resident, or the
-- id it will be given at its first sign-in (the outbox row of a code names it). A spent code
-- expires at once; the row stays for the minute between codes, and is pruned a day later.
CREATE TABLE IF NOT EXISTS login_codes (
    phone       text PRIMARY KEY,
    resident_id text NOT NULL,
    code_hash   bytea NOT NULL,
    sent_at     timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    tries_left  integer NOT NULL,
    CONSTRAINT login_codes_tries_not_negative CHECK (tries_left >= 0)
);
CREATE INDEX IF NOT EXISTS login_codes_by_sent_at ON login_codes (sent_at);
-- Codes sent per client address (an HMAC of it, not the address) in a fixed window: the
-- per-address limit. Rows of ended windows are pruned.
CREATE TABLE IF NOT EXISTS login_code_senders (
    address_hash bytea PRIMARY KEY,
    window_start timestamptz NOT NULL,
    codes        integer NOT NULL
);
CREATE INDEX IF NOT EXISTS login_code_senders_by_window ON login_code_senders (window_start);

-- The venue's desk (booking/staff.py, booking/imports.py, booking/attendance.py). Staff phones
-- linked to a venue sign in as that venue. A course's `code` names it within its venue (a term
-- import updates by it, never duplicates); `lessons` is how many weekly lessons it meets from
-- `starts_at`. Attendance: one row per booking and lesson date (Beijing time).
CREATE TABLE IF NOT EXISTS venue_staff (
    phone      text PRIMARY KEY,
    venue_id   bigint NOT NULL REFERENCES venues (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT venue_staff_phone_mobile CHECK (phone ~ '^1[3-9][0-9]{9}$')
);
CREATE INDEX IF NOT EXISTS venue_staff_by_venue ON venue_staff (venue_id);
ALTER TABLE courses ADD COLUMN IF NOT EXISTS code text;
ALTER TABLE courses ADD COLUMN IF NOT EXISTS lessons integer NOT NULL DEFAULT 1;
DO $$ BEGIN
    ALTER TABLE courses ADD CONSTRAINT courses_lessons_range CHECK (lessons BETWEEN 1 AND 52);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    ALTER TABLE courses ADD CONSTRAINT courses_code_shape
        CHECK (code IS NULL OR (length(code) BETWEEN 1 AND 40));
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE UNIQUE INDEX IF NOT EXISTS courses_code_per_venue ON courses (venue_id, code)
    WHERE code IS NOT NULL;
CREATE TABLE IF NOT EXISTS attendance (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id  uuid NOT NULL REFERENCES bookings (id),
    lesson_date date NOT NULL,  -- the lesson's date in Beijing time
    checked_at  timestamptz NOT NULL DEFAULT now(),
    method      text NOT NULL,
    verifier    text NOT NULL,  -- who checked them in: the staff token's subject
    CONSTRAINT attendance_method_known CHECK (method IN ('qr', 'code')),
    CONSTRAINT attendance_once_per_lesson UNIQUE (booking_id, lesson_date)
);
-- Releases (migration 0008): a set of courses opened in one mode, `fcfs`, `window` or
-- `lottery`; a course belongs to at most one. One entry of ranked wishes per resident and
-- release; a draw release's frozen entries file, results file and record are kept byte for
-- byte, so that what was published can be re-checked (`booking verify-draw`).
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
