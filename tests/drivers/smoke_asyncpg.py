"""asyncpg smoke through pgward (guardrails + mask-pii loaded): run by tests/tests/drivers.rs.

Usage: python3 smoke_asyncpg.py DSN. Prints SMOKE OK; any failed check raises. asyncpg
prepares every statement with parameters and asks for binary results.
"""
import asyncio
import datetime
import decimal
import io
import sys
import time

import asyncpg

ts = datetime.datetime(2026, 12, 4, 1, 2, 3, tzinfo=datetime.timezone.utc)


async def main(dsn):
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        # Simple protocol (execute without arguments) and extended.
        await conn.execute("SELECT 1; SELECT 2")
        assert await conn.fetchval("SELECT 1") == 1

        row = await conn.fetchrow(
            "SELECT $1::int + 1, $2::text || '!', $3::numeric * 2, $4::timestamptz, $5::bool,"
            " $6::bytea, $7::text",
            41, "hi", decimal.Decimal("1.25"), ts, True, b"\x00\x01", None,
        )
        assert tuple(row) == (42, "hi!", decimal.Decimal("2.50"), ts, True, b"\x00\x01", None), row
        stmt = await conn.prepare("SELECT $1::int * 2")
        for i in range(3):
            assert await stmt.fetchval(i) == i * 2
        assert await conn.fetchval("SELECT $1::int[]", [1, 2, 3]) == [1, 2, 3]

        # Masked for this identity (binary results).
        email = await conn.fetchval("SELECT email FROM customers WHERE id = $1", 1)
        assert email and email != "ada@example.com", email

        # Transactions.
        async with conn.transaction():
            await conn.execute("INSERT INTO items (name) VALUES ($1)", "asyncpg kept")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO items (name) VALUES ($1)", "asyncpg rolled back")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        counts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE name = 'asyncpg kept'),"
            " count(*) FILTER (WHERE name = 'asyncpg rolled back') FROM items"
        )
        assert tuple(counts) == (1, 0), counts

        # Errors and recovery.
        try:
            await conn.execute("DELETE FROM items")
            raise AssertionError("DELETE without WHERE was not refused")
        except asyncpg.PostgresError as e:
            assert e.sqlstate == "42501", e.sqlstate
        try:
            await conn.fetchval("SELECT 1 / $1::int", 0)
            raise AssertionError("no division error")
        except asyncpg.DivisionByZeroError:
            pass
        assert await conn.fetchval("SELECT 2") == 2

        # COPY in (binary) and out.
        await conn.copy_records_to_table(
            "items", records=[("asyncpg c1",), ("asyncpg c2",)], columns=["name"]
        )
        out = io.BytesIO()
        await conn.copy_from_query(
            "SELECT name FROM items WHERE name LIKE 'asyncpg c%' ORDER BY 1", output=out
        )
        assert out.getvalue() == b"asyncpg c1\nasyncpg c2\n", out.getvalue()

        # A timeout cancels the statement on the server; the connection goes on.
        started = time.monotonic()
        try:
            await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
            raise AssertionError("not cancelled")
        except asyncio.TimeoutError:
            pass
        assert time.monotonic() - started < 10
        assert await conn.fetchval("SELECT 3") == 3
    finally:
        await conn.close()
    print("SMOKE OK")


asyncio.run(main(sys.argv[1]))
