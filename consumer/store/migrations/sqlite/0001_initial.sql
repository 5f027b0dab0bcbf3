-- The ledger (one row per Voucherify transaction, the source of truth) and the card state
-- derived from it in the same transaction. Times are UTC ISO 8601 text of fixed width
-- (YYYY-MM-DDTHH:MM:SS.ffffff+00:00), so text order is time order. STRICT tables: an integer
-- overflow is an error, as on PostgreSQL, instead of a silent conversion to REAL.

CREATE TABLE ledger (
    transaction_id   TEXT NOT NULL PRIMARY KEY,
    voucher_id       TEXT NOT NULL,
    customer_id      TEXT NOT NULL,
    campaign_id      TEXT NOT NULL,
    points           INTEGER NOT NULL CHECK (points >= 0),
    reported_balance INTEGER NOT NULL,
    reported_pending INTEGER NOT NULL,
    occurred_at      TEXT NOT NULL,
    -- The record that first applied the entry: a later delivery from the same coordinates is
    -- our own replay, from anywhere else a duplicate.
    source_topic     TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    applied_at       TEXT NOT NULL
) STRICT;

-- Rebuilding or auditing one card from its ledger rows must not scan millions of them.
CREATE INDEX ledger_voucher_id_idx ON ledger (voucher_id);

CREATE TABLE cards (
    voucher_id          TEXT NOT NULL PRIMARY KEY,
    activated_points    INTEGER NOT NULL,
    -- Voucherify's own figures, from the newest transaction seen (occurred_at, then id).
    reported_balance    INTEGER NOT NULL,
    reported_pending    INTEGER NOT NULL,
    last_transaction_id TEXT NOT NULL,
    last_transaction_at TEXT NOT NULL,
    updated_at          TEXT NOT NULL
) STRICT;
