-- Migration 0002: one definition in SQL of "active" (confirmed or held) and of "a paid course
-- makes a hold that lasts hold_minutes", used by the trigger and the partial unique index (and,
-- in time, by every query). Re-runnable.

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

-- The active-bookings counter, now spelled with booking_active().
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

-- The same index, its predicate spelled with booking_active(). Postgres inlines the function in
-- index predicates and in queries, so `... AND booking_active(status)` and the literal spelling
-- both still use it. Dropped and made again in this migration's one transaction, so no other
-- transaction ever sees the bookings table without it.
DROP INDEX IF EXISTS bookings_one_active_per_resident;
CREATE UNIQUE INDEX bookings_one_active_per_resident
    ON bookings (course_id, resident_id) WHERE booking_active(status);
