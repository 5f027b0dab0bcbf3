-- A dead-lettered activation whose ledger entry and points were already applied: its
-- notification is owed. Replaying its dead letter (a record from other coordinates) then
-- emits the notification once, and the replayed record becomes the entry's source.

ALTER TABLE ledger ADD COLUMN notification_owed boolean NOT NULL DEFAULT false;

-- The audit and operators list what is owed; it is rare, so the index stays tiny.
CREATE INDEX ledger_notification_owed_idx ON ledger (transaction_id) WHERE notification_owed;
