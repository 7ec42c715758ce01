-- Migration 0003: payments found by their booking. Ending a paid booking (a cancel, a swap, a
-- cancelled course) turns its payment into a refund owed in the same transaction, which looks
-- the payment up by booking. Re-runnable.
CREATE INDEX IF NOT EXISTS payments_by_booking ON payments (booking_id);
