-- Migration 0005: venues found by place. The course list's "near me" keeps the venues inside a
-- bounding box around the place asked about (a range on lat, then on lon) before it computes the
-- haversine distance of each; a btree on (lat, lon) serves the box, no extension needed.
-- Re-runnable.
CREATE INDEX IF NOT EXISTS venues_by_place ON venues (lat, lon);
