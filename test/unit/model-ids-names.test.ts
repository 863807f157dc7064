import t from 'tap';
import { BadInputError, CofferError } from '../../src/errors.js';
import { parseWith } from '../../src/model/codec.js';
import { ID_PATTERN, IdSchema, newId } from '../../src/model/ids.js';
import { EntryNameSchema, MAX_NAME_BYTES, validateEntryName } from '../../src/model/names.js';

function codeOf(fn: () => void): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    return err instanceof CofferError ? err.code : `not a CofferError: ${String(err)}`;
  }
}

t.test('newId: 32 lowercase hex, random', async (t) => {
  const ids = Array.from({ length: 1000 }, () => newId());
  t.equal(ids.filter((id) => !ID_PATTERN.test(id)).length, 0, 'all match the pattern');
  t.equal(new Set(ids).size, 1000, 'no collisions in 1000 ids');
});

t.test('IdSchema rejects malformed ids', async (t) => {
  t.equal(parseWith(IdSchema, 'a'.repeat(32), 'id'), 'a'.repeat(32));
  for (const bad of ['A'.repeat(32), 'a'.repeat(31), 'a'.repeat(33), 'g'.repeat(32), ` ${'a'.repeat(31)}`, 42, null]) {
    t.throws(() => parseWith(IdSchema, bad, 'id'), BadInputError, `rejects ${JSON.stringify(bad)}`);
  }
  t.throws(() => parseWith(IdSchema, 'XYZ', 'thing id'), { message: /invalid thing id: must be an id: 32 lowercase hex/ });
});

t.test('entry names: invalid ones', async (t) => {
  const invalid = ['', '.', '..', 'a/b', '/', 'a\0b', '\0', '\uD800', 'x\uDC00', 'a\uD83Db', '__proto__'];
  for (const name of invalid) {
    t.equal(codeOf(() => validateEntryName(name)), 'invalid_name', `rejects ${JSON.stringify(name)}`);
  }
  t.throws(() => validateEntryName('a/b'), { message: /must not contain "\/"/ });
  t.throws(() => validateEntryName('a\0b'), { message: /NUL/ });
  t.throws(() => validateEntryName('\uD800'), { message: /lone surrogate/ });
});

t.test('entry names: length in UTF-8 bytes', async (t) => {
  t.equal(MAX_NAME_BYTES, 255);
  t.equal(codeOf(() => validateEntryName('a'.repeat(255))), null, '255 ASCII bytes ok');
  t.equal(codeOf(() => validateEntryName('a'.repeat(256))), 'name_too_long', '256 ASCII bytes too long');
  const euro = '€'.repeat(85); // 3 bytes each: 255
  t.equal(Buffer.byteLength(euro), 255);
  t.equal(codeOf(() => validateEntryName(euro)), null, '255-byte multi-byte name ok');
  t.equal(codeOf(() => validateEntryName(`${euro}a`)), 'name_too_long', '256-byte multi-byte name too long');
  const emoji = `${'😀'.repeat(63)}abc`; // 4-byte code points as surrogate pairs: 255
  t.equal(Buffer.byteLength(emoji), 255);
  t.equal(codeOf(() => validateEntryName(emoji)), null, 'surrogate pairs are fine');
  t.throws(() => validateEntryName('é'.repeat(128)), { code: 'name_too_long', message: /256 bytes/ });
});

t.test('entry names: ordinary odd names are accepted', async (t) => {
  for (const name of ['...', ' ', '.hidden', 'constructor', 'toString', 'a\\b', 'ünï cødé', 'line\nbreak']) {
    t.equal(codeOf(() => validateEntryName(name)), null, `accepts ${JSON.stringify(name)}`);
  }
});

t.test('EntryNameSchema reports the name problem', async (t) => {
  t.equal(parseWith(EntryNameSchema, 'ok.txt', 'name'), 'ok.txt');
  t.throws(() => parseWith(EntryNameSchema, '..', 'name'), { name: 'BadInputError', message: /invalid name: invalid entry name "\.\."/ });
  t.throws(() => parseWith(EntryNameSchema, 'x'.repeat(300), 'name'), { name: 'BadInputError', message: /300 bytes/ });
  t.throws(() => parseWith(EntryNameSchema, 7, 'name'), { name: 'BadInputError', message: /expected string/ });
});
