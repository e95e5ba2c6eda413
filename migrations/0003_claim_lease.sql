-- Claims with a lease (issue #14): a complete holds its claim by renewing `lease_until`
-- while it publishes; one whose instance died (its lease lapsed) is taken over by the next
-- complete of the session instead of leaving the upload claimed until the sweep. The token
-- fences the old holder: its publish, finish or unclaim finds another token and changes
-- nothing. Rows claimed before this migration have neither: their claim lapses an hour after
-- `claimed_at`, as before.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS claim_token uuid;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS lease_until timestamptz;
