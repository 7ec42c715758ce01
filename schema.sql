-- The whole booking database. Safe to apply twice: every statement is IF NOT EXISTS or OR REPLACE.
-- Postgres is the ledger and the backstop: the constraints below hold even if the Redis gate
-- were bypassed.

CREATE TABLE IF NOT EXISTS venues (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    district   text NOT NULL,
    address    text NOT NULL,
    lat        double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    created_at timestamptz NOT NULL DEFAULT now()
);

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
    CONSTRAINT courses_capacity_range CHECK (capacity BETWEEN 0 AND 100000),
    CONSTRAINT courses_price_range CHECK (price_cents BETWEEN 0 AND 100000000),
    CONSTRAINT courses_status_known CHECK (status IN ('published', 'cancelled')),
    CONSTRAINT courses_ends_after_start CHECK (ends_at > starts_at),
    CONSTRAINT courses_sales_open_before_start CHECK (sales_open_at <= starts_at),
    CONSTRAINT courses_not_oversold CHECK (active_bookings <= capacity),
    CONSTRAINT courses_active_not_negative CHECK (active_bookings >= 0)
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
    CONSTRAINT bookings_status_known CHECK (status IN ('confirmed', 'cancelled'))
);
-- No duplicates: at most one active booking per (course, resident).
CREATE UNIQUE INDEX IF NOT EXISTS bookings_one_active_per_resident
    ON bookings (course_id, resident_id) WHERE status = 'confirmed';
CREATE INDEX IF NOT EXISTS bookings_by_resident ON bookings (resident_id, created_at);

-- No oversell: courses.active_bookings follows the bookings table statement by statement, and
-- the courses_not_oversold check refuses any statement that would pass capacity. Course rows are
-- updated in id order, so concurrent multi-course batches never deadlock.
CREATE OR REPLACE FUNCTION bookings_apply_active_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids    bigint[];
    deltas integer[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, count(*)::integer AS n FROM new_rows
                 WHERE status = 'confirmed' GROUP BY course_id) per_course;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, sum(d)::integer AS n FROM (
                    SELECT course_id, 1 AS d FROM new_rows WHERE status = 'confirmed'
                    UNION ALL
                    SELECT course_id, -1 FROM old_rows WHERE status = 'confirmed'
                ) changes GROUP BY course_id HAVING sum(d) <> 0) per_course;
    ELSE
        SELECT array_agg(course_id ORDER BY course_id), array_agg(n ORDER BY course_id)
          INTO ids, deltas
          FROM (SELECT course_id, -count(*)::integer AS n FROM old_rows
                 WHERE status = 'confirmed' GROUP BY course_id) per_course;
    END IF;
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        UPDATE courses SET active_bookings = active_bookings + deltas[i] WHERE id = ids[i];
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
