// The migration splitter: statements end at semicolons outside comments, strings and dollar-quoted bodies.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { migrationsDir, statements } from '../../src/store/migrate.js'

describe('statements', () => {
  it('keeps function bodies, DO blocks, strings and comments with semicolons whole', () => {
    const sql = `-- a comment; with a semicolon
CREATE TABLE t (a text); -- trailing; comment
INSERT INTO t VALUES ('x;y'), ('it''s; fine');
CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'no;';
END
$$;
DO $body$ BEGIN PERFORM 1; END $body$;
SELECT "odd;name" FROM t`
    expect(statements(sql)).toEqual([
      'CREATE TABLE t (a text)',
      "INSERT INTO t VALUES ('x;y'), ('it''s; fine')",
      "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  RAISE EXCEPTION 'no;';\nEND\n$$",
      'DO $body$ BEGIN PERFORM 1; END $body$',
      'SELECT "odd;name" FROM t',
    ])
  })

  it('the privacy migration splits into its statements, the trigger function in one piece', () => {
    const sql = fs.readFileSync(path.join(migrationsDir(), '0007_privacy.sql'), 'utf8')
    const stmts = statements(sql)
    const fn = stmts.find((s) => s.startsWith('CREATE OR REPLACE FUNCTION consents_append_only'))
    expect(fn).toMatch(/RETURN OLD;\s+END IF;\s+RAISE EXCEPTION/)
    expect(fn).toMatch(/\$\$$/)
    expect(stmts.filter((s) => s.startsWith('DO $$'))).toHaveLength(1)
  })
})
