"""psycopg 3 smoke through pgward (guardrails + mask-pii loaded): run by tests/tests/drivers.rs.

Usage: python3 smoke_psycopg.py CONNINFO. Prints SMOKE OK; any failed check raises.
"""
import datetime
import decimal
import sys
import threading
import time

import psycopg
from psycopg import errors

conninfo = sys.argv[1]
ts = datetime.datetime(2026, 12, 4, 1, 2, 3, tzinfo=datetime.timezone.utc)

with psycopg.connect(conninfo, autocommit=True) as conn:
    # Simple protocol (no parameters) and a multi-statement string.
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.execute("SELECT 1; SELECT 2")

    # Parameters of several types, text and binary results, a prepared statement.
    row = conn.execute(
        "SELECT %s::int + 1, %s::text || '!', %s::numeric * 2, %s::timestamptz, %s::bool,"
        " %s::bytea, %s::text",
        (41, "hi", decimal.Decimal("1.25"), ts, True, b"\x00\x01", None),
    ).fetchone()
    assert row == (42, "hi!", decimal.Decimal("2.50"), ts, True, b"\x00\x01", None), row
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT %s::int8, %s::float8, %s::text, %s::timestamptz", (7, 1.5, "b", ts))
        assert cur.fetchone() == (7, 1.5, "b", ts)
    for i in range(3):
        got = conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()
        assert got == (i * 2,), got

    # Masked for this identity, in text and binary.
    email = conn.execute("SELECT email FROM customers WHERE id = %s", (1,)).fetchone()[0]
    assert email and email != "ada@example.com", email
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT email FROM customers WHERE id = 1")
        assert cur.fetchone()[0] not in (None, "ada@example.com")

    # Transactions: one committed, one rolled back.
    with conn.transaction():
        conn.execute("INSERT INTO items (name) VALUES (%s)", ("psycopg kept",))
    with conn.transaction():
        conn.execute("INSERT INTO items (name) VALUES (%s)", ("psycopg rolled back",))
        raise psycopg.Rollback()
    counts = conn.execute(
        "SELECT count(*) FILTER (WHERE name = 'psycopg kept'),"
        " count(*) FILTER (WHERE name = 'psycopg rolled back') FROM items"
    ).fetchone()
    assert counts == (1, 0), counts

    # Errors: a policy refusal and a server error, then the session goes on.
    try:
        conn.execute("DELETE FROM items")
        raise AssertionError("DELETE without WHERE was not refused")
    except psycopg.Error as e:
        assert e.sqlstate == "42501", e.sqlstate
    try:
        conn.execute("SELECT 1 / %s", (0,))
        raise AssertionError("no division error")
    except errors.DivisionByZero:
        pass
    assert conn.execute("SELECT 2").fetchone() == (2,)

    # COPY in and out (rows masked on the way out).
    with conn.cursor() as cur:
        with cur.copy("COPY items (name) FROM STDIN") as copy:
            for name in ("psycopg c1", "psycopg c2"):
                copy.write_row((name,))
        with cur.copy(
            "COPY (SELECT name FROM items WHERE name LIKE 'psycopg c%' ORDER BY 1) TO STDOUT"
        ) as copy:
            names = [r[0] for r in copy.rows()]
        assert names == ["psycopg c1", "psycopg c2"], names
        with cur.copy("COPY (SELECT email FROM customers) TO STDOUT") as copy:
            out = b"".join(bytes(b) for b in copy)
        assert out and b"ada@example.com" not in out, out

    # Cancel a running statement; the session goes on.
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(20)")
        raise AssertionError("not cancelled")
    except errors.QueryCanceled:
        pass
    assert time.monotonic() - started < 10
    assert conn.execute("SELECT 3").fetchone() == (3,)

# An error inside a transaction: the transaction is aborted until ROLLBACK.
with psycopg.connect(conninfo) as tx:
    tx.execute("INSERT INTO items (name) VALUES ('psycopg aborted')")
    try:
        tx.execute("SELECT 1 / 0")
    except errors.DivisionByZero:
        pass
    try:
        tx.execute("SELECT 1")
        raise AssertionError("the failed transaction went on")
    except errors.InFailedSqlTransaction:
        pass
    tx.rollback()
    assert tx.execute("SELECT count(*) FROM items WHERE name = 'psycopg aborted'").fetchone() == (0,)

print("SMOKE OK")
