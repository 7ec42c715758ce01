-- Migration 0006: a resident's waitlist places found by resident ("my bookings" lists them).
-- Re-runnable.
CREATE INDEX IF NOT EXISTS waitlist_by_resident ON waitlist (resident_id) WHERE status = 'waiting';
