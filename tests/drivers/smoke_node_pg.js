// node-postgres (`pg` from npm) smoke through pgward (guardrails + mask-pii loaded): run by
// tests/tests/drivers.rs with NODE_PATH pointing at the installed modules.
// Usage: node smoke_node_pg.js PORT DATABASE. Prints SMOKE OK; any failed check throws.
'use strict';
const assert = require('assert');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');

const config = {
  host: '127.0.0.1',
  port: Number(process.argv[2]),
  database: process.argv[3],
  user: 'alice',
  password: 'alice-pw',
};

async function expectError(promise, code) {
  try {
    await promise;
  } catch (e) {
    assert.strictEqual(e.code, code, `${e.code}: ${e.message}`);
    return;
  }
  throw new Error(`no error ${code}`);
}

async function main() {
  const client = new Client(config);
  await client.connect();
  try {
    // Simple protocol (no parameters) and a multi-statement string.
    assert.strictEqual((await client.query('SELECT 1 AS one')).rows[0].one, 1);
    await client.query('SELECT 1; SELECT 2');

    // Parameters of several types (extended protocol), a named prepared statement.
    const ts = new Date(Date.UTC(2026, 11, 4, 1, 2, 3));
    const r = await client.query(
      "SELECT $1::int + 1 AS a, $2::text || '!' AS b, $3::numeric * 2 AS c, $4::timestamptz AS d," +
        ' $5::bool AS e, $6::bytea AS f, $7::text AS g',
      [41, 'hi', '1.25', ts, true, Buffer.from([0, 1]), null],
    );
    const row = r.rows[0];
    assert.strictEqual(row.a, 42);
    assert.strictEqual(row.b, 'hi!');
    assert.strictEqual(row.c, '2.50');
    assert.strictEqual(row.d.getTime(), ts.getTime());
    assert.strictEqual(row.e, true);
    assert.deepStrictEqual(row.f, Buffer.from([0, 1]));
    assert.strictEqual(row.g, null);
    for (let i = 0; i < 3; i++) {
      const p = await client.query({ name: 'double', text: 'SELECT $1::int * 2 AS v', values: [i] });
      assert.strictEqual(p.rows[0].v, i * 2);
    }
    // Binary results.
    const b = await client.query({ text: 'SELECT $1::int4 AS v', values: [7], binary: true });
    assert.strictEqual(b.rows[0].v, 7);

    // Masked for this identity.
    const email = (await client.query('SELECT email FROM customers WHERE id = $1', [1])).rows[0].email;
    assert.ok(email && email !== 'ada@example.com', email);

    // Transactions.
    await client.query('BEGIN');
    await client.query('INSERT INTO items (name) VALUES ($1)', ['node kept']);
    await client.query('COMMIT');
    await client.query('BEGIN');
    await client.query('INSERT INTO items (name) VALUES ($1)', ['node rolled back']);
    await client.query('ROLLBACK');
    const counts = await client.query(
      "SELECT count(*) FILTER (WHERE name = 'node kept')::int AS kept," +
        " count(*) FILTER (WHERE name = 'node rolled back')::int AS gone FROM items",
    );
    assert.deepStrictEqual(counts.rows[0], { kept: 1, gone: 0 });

    // Errors and recovery, also inside a transaction.
    await expectError(client.query('DELETE FROM items'), '42501');
    await expectError(client.query('SELECT 1 / $1::int', [0]), '22012');
    await client.query('BEGIN');
    await expectError(client.query('SELECT 1 / 0'), '22012');
    await expectError(client.query('SELECT 1'), '25P02');
    await client.query('ROLLBACK');
    assert.strictEqual((await client.query('SELECT 2 AS v')).rows[0].v, 2);

    // COPY in and out (pg-copy-streams).
    await pipeline(Readable.from(['node c1\n', 'node c2\n']), client.query(copyFrom('COPY items (name) FROM STDIN')));
    const chunks = [];
    await pipeline(
      client.query(copyTo("COPY (SELECT name FROM items WHERE name LIKE 'node c%' ORDER BY 1) TO STDOUT")),
      new Writable({
        write(chunk, _enc, done) {
          chunks.push(chunk);
          done();
        },
      }),
    );
    assert.strictEqual(Buffer.concat(chunks).toString(), 'node c1\nnode c2\n');

    // Cancel: node-postgres sends a CancelRequest from another Client object.
    const started = Date.now();
    const sleeping = client.query('SELECT pg_sleep(20)');
    setTimeout(() => new Client(config).cancel(client, client.activeQuery), 500);
    await expectError(sleeping, '57014');
    assert.ok(Date.now() - started < 10000);
    assert.strictEqual((await client.query('SELECT 3 AS v')).rows[0].v, 3);
  } finally {
    await client.end();
  }
  console.log('SMOKE OK');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
