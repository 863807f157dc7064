import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { BadInputError } from '../../src/errors.js';
import { DEFAULT_CACHE_SIZE_MIB, parseMountpointsFile } from '../../src/mount/mountpoints.js';

const FILE = '/etc/coffer/mountpoints.json';
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function parse(value: unknown, file = FILE) {
  return parseMountpointsFile(JSON.stringify(value), file);
}

function rejection(value: unknown, file = FILE): string {
  try {
    parse(value, file);
  } catch (err) {
    if (!(err instanceof BadInputError)) return `not a BadInputError: ${String(err)}`;
    return err.message;
  }
  return 'accepted';
}

const entry = { workspace: 'docs', path: '/mnt/docs' };

t.test('a minimal file gets defaults', async (t) => {
  const cfg = parse({ mounts: [entry] });
  t.same(cfg, {
    device: undefined,
    mounts: [{ workspace: 'docs', path: '/mnt/docs', readOnly: false, at: undefined, cacheSizeMiB: DEFAULT_CACHE_SIZE_MIB, pin: false }],
  });
});

t.test('relative paths resolve against the file directory', async (t) => {
  const cfg = parse(
    { device: 'keys/dev.coffer', mounts: [{ workspace: 'a', path: 'mnt/a/' }, { workspace: 'b', path: '../b' }] },
    '/home/u/cfg/mountpoints.json',
  );
  t.equal(cfg.device, '/home/u/cfg/keys/dev.coffer');
  t.equal(cfg.mounts[0]?.path, '/home/u/cfg/mnt/a');
  t.equal(cfg.mounts[1]?.path, '/home/u/b');
  const rel = parse({ mounts: [{ workspace: 'a', path: 'x' }] }, 'rel/m.json');
  t.equal(rel.mounts[0]?.path, resolve('rel', 'x'), 'a relative file name resolves from the cwd first');
});

t.test('all fields, at implies readOnly', async (t) => {
  const cfg = parse({
    _doc: ['top', 'level'],
    device: '/d/dev',
    mounts: [
      { _doc: 'x', workspace: ' team ', path: '/m/1', readOnly: true, cacheSizeMiB: 64, pin: true },
      { workspace: 'team', path: '/m/2', at: '2024-05-01T12:00:00Z' },
      { workspace: 'team', path: '/m/3', at: '2024-05-01', readOnly: true },
      { workspace: 'team', path: '/m/4', at: '2024-05-01T14:30+02:00' },
    ],
  });
  t.same(cfg.mounts[0], { workspace: 'team', path: '/m/1', readOnly: true, at: undefined, cacheSizeMiB: 64, pin: true });
  t.equal(cfg.mounts[1]?.readOnly, true, 'at implies readOnly');
  t.equal(cfg.mounts[1]?.at, Date.UTC(2024, 4, 1, 12));
  t.equal(cfg.mounts[2]?.at, Date.UTC(2024, 4, 1), 'a date means 00:00 UTC');
  t.equal(cfg.mounts[3]?.at, Date.UTC(2024, 4, 1, 12, 30), 'offsets are honoured');
});

t.test('rejections name the file, the entry and the field', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['not JSON', undefined, /mountpoints\.json: not valid JSON/],
    ['missing mounts', {}, /mountpoints\.json: mounts: missing required field/],
    ['empty mounts', { mounts: [] }, /mounts: must list at least one mount/],
    ['missing workspace', { mounts: [entry, { path: '/x' }] }, /mountpoints\.json: mounts\[1\]\.workspace: missing required field/],
    ['missing path', { mounts: [{ workspace: 'w' }] }, /mounts\[0\]\.path: missing required field/],
    ['extra field in entry', { mounts: [{ ...entry, redOnly: true }] }, /mounts\[0\]: unknown field "redOnly"/],
    ['extra field at top', { mounts: [entry], devices: 'x' }, /\(top level\): unknown field "devices"/],
    ['wrong type', { mounts: [{ ...entry, readOnly: 'yes' }] }, /mounts\[0\]\.readOnly: expected boolean, got string/],
    ['wrong type number', { mounts: [{ ...entry, path: 5 }] }, /mounts\[0\]\.path: expected string, got number/],
    ['mounts not an array', { mounts: {} }, /mounts: expected array, got object/],
    ['fractional cache', { mounts: [{ ...entry, cacheSizeMiB: 1.5 }] }, /mounts\[0\]\.cacheSizeMiB: must be a whole number/],
    ['zero cache', { mounts: [{ ...entry, cacheSizeMiB: 0 }] }, /mounts\[0\]\.cacheSizeMiB: must be at least 1/],
    ['empty workspace', { mounts: [{ ...entry, workspace: '  ' }] }, /mounts\[0\]\.workspace: must not be empty/],
    ['bad _doc', { _doc: 5, mounts: [entry] }, /_doc: expected a string or an array of strings/],
    [
      'duplicate path',
      { mounts: [entry, { workspace: 'other', path: '/mnt/docs/' }] },
      /mounts\[1\]\.path: duplicate of mounts\[0\]\.path \(\/mnt\/docs\)/,
    ],
    [
      'duplicate after resolution',
      { mounts: [{ workspace: 'a', path: '/etc/coffer/m' }, { workspace: 'b', path: 'm' }] },
      /mounts\[1\]\.path: duplicate/,
    ],
    ['nested paths', { mounts: [entry, { workspace: 'b', path: '/mnt/docs/inner' }] }, /mounts\[1\]\.path: .* nested/],
    [
      'at with readOnly false',
      { mounts: [{ ...entry, at: '2024-05-01', readOnly: false }] },
      /mounts\[0\]\.readOnly: must not be false when "at" is given/,
    ],
    ['bad date', { mounts: [{ ...entry, at: 'yesterday' }] }, /mounts\[0\]\.at: must be an ISO-8601 date/],
    ['impossible date', { mounts: [{ ...entry, at: '2024-02-30' }] }, /mounts\[0\]\.at: must be an ISO-8601/],
    ['date-time without zone', { mounts: [{ ...entry, at: '2024-05-01T12:00:00' }] }, /mounts\[0\]\.at: must be an ISO-8601/],
    ['bad hour', { mounts: [{ ...entry, at: '2024-05-01T25:00:00Z' }] }, /mounts\[0\]\.at: must be an ISO-8601/],
    ['at not a string', { mounts: [{ ...entry, at: 1714564800000 }] }, /mounts\[0\]\.at: expected string, got number/],
  ];
  for (const [name, value, re] of cases) {
    const msg = name === 'not JSON' ? notJson() : rejection(value);
    t.match(msg, re, name);
    t.match(msg, /^\/etc\/coffer\/mountpoints\.json: /, `${name}: names the file`);
  }
});

function notJson(): string {
  try {
    parseMountpointsFile('{ "mounts": [ ', FILE);
  } catch (err) {
    return err instanceof BadInputError ? err.message : `not a BadInputError: ${String(err)}`;
  }
  return 'accepted';
}

t.test('the example file parses', async (t) => {
  const file = join(repoRoot, 'mountpoints.example.json');
  const cfg = parseMountpointsFile(await readFile(file, 'utf8'), file);
  t.equal(cfg.device, join(repoRoot, 'device.coffer'));
  t.equal(cfg.mounts.length, 3);
  t.equal(cfg.mounts[0]?.path, join(repoRoot, 'mnt/team-docs'));
  t.equal(cfg.mounts[0]?.pin, true);
  t.equal(cfg.mounts[1]?.readOnly, true, 'the "at" mount is read-only');
  t.equal(cfg.mounts[1]?.at, Date.UTC(2024, 4, 1, 12));
  t.equal(cfg.mounts[2]?.readOnly, true);
  const text = await readFile(file, 'utf8');
  for (const field of ['device', 'workspace', 'path', 'readOnly', 'at', 'cacheSizeMiB', 'pin']) {
    t.match(text, new RegExp(`"\\s*${field} \\(`), `the example documents ${field}`);
  }
});
