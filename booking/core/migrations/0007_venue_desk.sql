-- Migration 0007: the venue's desk. Staff phones linked to a venue (they sign in as the venue),
-- a course's code within its venue (a term import updates by it, never duplicates) and how many
-- weekly lessons it meets, and attendance: one row per booking and lesson date.
-- Re-runnable.
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
