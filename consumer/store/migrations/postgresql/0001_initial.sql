-- The ledger (one row per Voucherify transaction, the source of truth) and the card state
-- derived from it in the same transaction. Transaction ids use the "C" collation so that the
-- tie-break between snapshots of equal time orders exactly as in SQLite and Python.

CREATE TABLE ledger (
    transaction_id   text COLLATE "C" PRIMARY KEY,
    voucher_id       text NOT NULL,
    customer_id      text NOT NULL,
    campaign_id      text NOT NULL,
    points           bigint NOT NULL CHECK (points >= 0),
    reported_balance bigint NOT NULL,
    reported_pending bigint NOT NULL,
    occurred_at      timestamptz NOT NULL,
    -- The record that first applied the entry: a later delivery from the same coordinates is
    -- our own replay, from anywhere else a duplicate.
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now()
);

-- Rebuilding or auditing one card from its ledger rows must not scan millions of them.
CREATE INDEX ledger_voucher_id_idx ON ledger (voucher_id);

CREATE TABLE cards (
    voucher_id          text PRIMARY KEY,
    activated_points    bigint NOT NULL,
    -- Voucherify's own figures, from the newest transaction seen (occurred_at, then id).
    reported_balance    bigint NOT NULL,
    reported_pending    bigint NOT NULL,
    last_transaction_id text COLLATE "C" NOT NULL,
    last_transaction_at timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
