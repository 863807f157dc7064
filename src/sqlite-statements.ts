import type Database from 'better-sqlite3';

/**
 * Prepared statements cached by their text (preparing costs more than running the small queries the
 * stores make; the texts are a fixed, small set). Used by the client's and the server's SQLite stores.
 */
export function statementCache(db: Database.Database): (text: string) => Database.Statement {
  const statements = new Map<string, Database.Statement>();
  return (text) => {
    let st = statements.get(text);
    if (!st) {
      st = db.prepare(text);
      statements.set(text, st);
    }
    return st;
  };
}
