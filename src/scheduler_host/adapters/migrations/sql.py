"""SQL text that two migrations write the same. Each use is part of its migration's history:
change none of it; a new migration writes its own."""

# The start of the rate limiter's function after its parameters, in 0002 and in 0003: its
# locals, and the scope's lock for the transaction.
RATE_LIMIT_HIT_START = """RETURNS interval
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ timestamptz;
    window_start timestamptz;
    freeing timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_scope, 0));"""
