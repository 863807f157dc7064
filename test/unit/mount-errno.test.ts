import { constants } from 'node:os';
import t from 'tap';
import { BadInputError, CofferError, ERROR_CODES, expectedError, IntegrityError, WrongPasswordError } from '../../src/errors.js';
import { ERRNO_BY_CODE, errnoFor, errnoInfo } from '../../src/mount/errno.js';

const E = constants.errno;

t.test('every ErrorCode maps to a negative errno of positive magnitude', async (t) => {
  for (const code of ERROR_CODES) {
    const n = errnoFor(new CofferError(code, 'x'));
    t.ok(Number.isInteger(n) && n < 0, `${code} → ${n} is negative`);
    t.equal(-n, ERRNO_BY_CODE[code], `${code} uses the table`);
    t.ok(Object.values(E).includes(-n), `${code} → a known errno`);
  }
  t.same(Object.keys(ERRNO_BY_CODE).sort(), [...ERROR_CODES].sort(), 'the table has exactly the ErrorCodes');
});

t.test('the documented choices', async (t) => {
  const expect: Record<string, number> = {
    not_found: E.ENOENT,
    exists: E.EEXIST,
    not_empty: E.ENOTEMPTY,
    not_a_directory: E.ENOTDIR,
    is_a_directory: E.EISDIR,
    name_too_long: E.ENAMETOOLONG,
    invalid_name: E.EINVAL,
    read_only: E.EROFS,
    forbidden: E.EACCES,
    unauthorized: E.EACCES,
    not_supported: E.ENOTSUP,
    integrity: E.EIO,
    offline: E.EHOSTUNREACH,
    unavailable: E.EHOSTUNREACH,
    no_space: E.ENOSPC,
    busy: E.EBUSY,
    bad_request: E.EINVAL,
    too_large: E.EFBIG,
    conflict: E.EIO,
    rate_limited: E.EAGAIN,
    wrong_password: E.EACCES,
    internal: E.EIO,
  };
  for (const [code, errno] of Object.entries(expect)) {
    t.equal(errnoFor(new CofferError(code as (typeof ERROR_CODES)[number], 'x')), -errno, code);
  }
  t.equal(Object.keys(expect).length, ERROR_CODES.length, 'all codes checked');
  t.equal(E.ENOENT, 2, 'fuse-native expects Linux numbers: -2 is ENOENT');
});

t.test('subclasses map by their code', async (t) => {
  t.equal(errnoFor(new IntegrityError('bad mac')), -E.EIO);
  t.equal(errnoFor(new WrongPasswordError()), -E.EACCES);
  t.equal(errnoFor(new BadInputError('bad')), -E.EINVAL);
});

t.test('node system errors map to their own errno', async (t) => {
  const err = Object.assign(new Error('write failed'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  t.equal(errnoFor(err), -E.ENOSPC);
  t.same(errnoInfo(err), { errno: -E.ENOSPC, code: 'ENOSPC', expected: true });
  t.equal(errnoFor(Object.assign(new Error('x'), { code: 'EDQUOT' })), -E.EDQUOT);
  t.equal(errnoFor(Object.assign(new Error('x'), { code: 'EACCES' })), -E.EACCES);
});

t.test('unknown values are EIO and flagged unexpected', async (t) => {
  for (const v of [
    new Error('boom'),
    new TypeError('x is undefined'),
    'a string',
    42,
    null,
    undefined,
    { code: 'ERR_SOMETHING' },
    Object.assign(new Error('x'), { code: 'ENOTAREALERRNO' }),
    Object.assign(new Error('x'), { code: 'toString' }),
  ]) {
    t.equal(errnoFor(v), -E.EIO, `${String((v as { code?: unknown } | null)?.code ?? v)} → EIO`);
    t.equal(errnoInfo(v).expected, false);
    t.equal(errnoInfo(v).code, 'unexpected');
  }
  t.equal(errnoInfo(new CofferError('busy', 'x')).expected, true);
});

t.test('an expected error carries its code and message but no stack frames', async (t) => {
  const err = expectedError('not_found', 'no such file or folder');
  t.ok(err instanceof CofferError);
  t.equal(err.code, 'not_found');
  t.equal(err.message, 'no such file or folder');
  t.notMatch(err.stack ?? '', /\n\s+at /, 'no frames captured');
  t.match(new CofferError('internal', 'x').stack ?? '', /\n\s+at /, 'other errors keep theirs');
  t.equal(errnoInfo(err).errno, -2, 'ENOENT at the mount');
});
