-- The baseline's ledger in PostgreSQL: accounts and an idempotency table, and one function doing
-- a durable member-to-member transfer with an idempotency key, as Tally's Transfer does:
-- a key seen before returns the stored outcome and changes nothing; a transfer never leaves a
-- negative balance. pgbench calls tally_transfer once per transaction (synchronous_commit on).
SET client_min_messages = warning;
DROP TABLE IF EXISTS operations;
DROP TABLE IF EXISTS accounts;
CREATE TABLE accounts (
    id integer PRIMARY KEY,
    balance_points bigint NOT NULL CHECK (balance_points >= 0)
);
CREATE TABLE operations (
    idempotency_key text PRIMARY KEY,
    from_id integer NOT NULL,
    to_id integer NOT NULL,
    amount_points bigint NOT NULL,
    outcome text NOT NULL
);

CREATE OR REPLACE FUNCTION tally_transfer(p_key text, p_from integer, p_to integer, p_amount bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    stored text;
    result text;
BEGIN
    SELECT outcome INTO stored FROM operations WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN 'replay:' || stored;
    END IF;
    IF p_from = p_to THEN
        result := 'refused:same-member';
    ELSE
        -- Both rows locked in id order, so two opposite transfers cannot deadlock.
        PERFORM 1 FROM accounts WHERE id IN (p_from, p_to) ORDER BY id FOR UPDATE;
        UPDATE accounts SET balance_points = balance_points - p_amount
            WHERE id = p_from AND balance_points >= p_amount;
        IF FOUND THEN
            UPDATE accounts SET balance_points = balance_points + p_amount WHERE id = p_to;
            result := 'applied';
        ELSE
            result := 'refused:insufficient-points';
        END IF;
    END IF;
    INSERT INTO operations VALUES (p_key, p_from, p_to, p_amount, result);
    RETURN result;
END $$;
