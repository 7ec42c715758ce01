-- Migration 0004: residents, who sign in with their phone, and their one-time codes (issue
-- 11). Re-runnable.

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
