-- execgate's audit trail in PostgreSQL (14 or later): one row per record of
-- every shipped local audit log. The shipper runs this file (idempotently,
-- under an advisory lock) when the triggers below are missing; run it
-- yourself to create the table under an owner other than the shipper's role.
--
-- log_id    the lowercase hex SHA-256 of the payload of the log's first record
--           (seq 1): every later record chains back to it, so it names one
--           chain, whatever host or file it lives in, across rotations.
-- seq       the record's seq in that chain (1, 2, ...).
-- sha256    the SHA-256 of the record's payload (the next record's "prev").
-- envelope  the record's DSSE envelope, byte for byte as in the local log
--           (the line without its newline): what `execgate verify --postgres`
--           checks. Query it with envelope::jsonb.
-- shipped_at  when the row was inserted (the server's clock).
--
-- Rows are only ever inserted (INSERT ... ON CONFLICT DO NOTHING): the
-- triggers refuse UPDATE, DELETE and TRUNCATE for every role. A superuser
-- can disable triggers; the chain still shows a row deleted or changed.
-- Grant the shipper's role INSERT and SELECT only.

CREATE TABLE IF NOT EXISTS execgate_audit (
    log_id     text        NOT NULL CHECK (log_id ~ '^[0-9a-f]{64}$'),
    seq        bigint      NOT NULL CHECK (seq > 0),
    sha256     text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    envelope   text        NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_id, seq)
);

CREATE OR REPLACE FUNCTION execgate_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'execgate_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE TRIGGER execgate_audit_no_change
    BEFORE UPDATE OR DELETE ON execgate_audit
    FOR EACH ROW EXECUTE FUNCTION execgate_audit_append_only();

CREATE OR REPLACE TRIGGER execgate_audit_no_truncate
    BEFORE TRUNCATE ON execgate_audit
    FOR EACH STATEMENT EXECUTE FUNCTION execgate_audit_append_only();
