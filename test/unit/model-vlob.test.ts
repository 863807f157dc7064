import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { generateSigningKeyPair, signMessage, xchachaEncrypt } from '../../src/crypto/index.js';
import { BadInputError, IntegrityError } from '../../src/errors.js';
import { encode } from '../../src/model/codec.js';
import { newId, type DeviceId } from '../../src/model/ids.js';
import type { FileManifest, FolderManifest, Manifest, UserManifest, WorkspaceManifest } from '../../src/model/manifests.js';
import { openVlob, sealVlob, type VlobContext } from '../../src/model/vlob.js';

const NOW = 1_700_000_000_000;
const alice = { deviceId: newId(), keys: generateSigningKeyPair() };
const mallory = { deviceId: newId(), keys: generateSigningKeyPair() };
const workspaceKey = randomBytes(32);
const realmId = newId();
const verifyKeyOf = (id: DeviceId): Uint8Array | undefined =>
  id === alice.deviceId ? alice.keys.publicKey : id === mallory.deviceId ? mallory.keys.publicKey : undefined;

function ctxFor(m: Manifest, over: Partial<VlobContext> = {}): VlobContext {
  return { realmId, vlobId: m.id, version: 3, keyIndex: 1, ...over };
}
function folder(): FolderManifest {
  return { type: 'folder', id: newId(), parent: newId(), created: NOW, updated: NOW, mode: 0o755, children: { 'a.txt': newId(), 'b c': newId() } };
}
function manifests(): Manifest[] {
  const file: FileManifest = {
    type: 'file', id: newId(), parent: newId(), created: NOW, updated: NOW + 5, mode: 0o600, size: 5000, blockSize: 4096,
    blocks: [{ id: newId(), offset: 4096, size: 904, key: randomBytes(32), digest: randomBytes(32) }],
  };
  const workspace: WorkspaceManifest = { type: 'workspace', id: realmId, name: 'Shared', created: NOW, updated: NOW, mode: 0o755, children: { x: newId() } };
  const user: UserManifest = { type: 'user', id: newId(), created: NOW, updated: NOW, workspaces: [{ id: realmId, name: 'Shared' }] };
  return [file, folder(), workspace, user];
}
function seal(m: Manifest, ctx = ctxFor(m), signer = alice): Uint8Array {
  return sealVlob(m, ctx, { deviceId: signer.deviceId, timestamp: NOW + 7 }, signer.keys.secretKey, workspaceKey);
}
/** Builds a correctly signed and encrypted vlob around an arbitrary payload: what a malicious member could upload. */
function forge(payload: Record<string, unknown>, ctx: VlobContext, signer = alice): Uint8Array {
  const payloadBytes = encode(payload);
  const signed = encode({ payload: payloadBytes, signature: new Uint8Array(signMessage(signer.keys.secretKey, payloadBytes)) });
  const aad = Buffer.from(`coffer-vlob/1|${ctx.realmId}|${ctx.vlobId}|${ctx.version}|${ctx.keyIndex}`);
  return xchachaEncrypt(workspaceKey, signed, aad);
}
function integrity(t: Test, fn: () => unknown, re: RegExp, what: string): void {
  try {
    fn();
    t.fail(`${what}: accepted`);
  } catch (err) {
    t.ok(err instanceof IntegrityError, `${what}: IntegrityError (got ${String(err)})`);
    t.match((err as Error).message, re, `${what}: message says why`);
  }
}

t.test('round trip of every manifest type', async (t) => {
  for (const m of manifests()) {
    const blob = seal(m);
    t.ok(blob instanceof Uint8Array);
    const opened = openVlob(blob, ctxFor(m), workspaceKey, verifyKeyOf);
    t.same(opened, { manifest: m, author: alice.deviceId, timestamp: NOW + 7 }, `${m.type} round trips`);
  }
  const m = folder();
  t.notSame(seal(m), seal(m), 'fresh nonce each time');
  t.notOk(Buffer.from(seal(m)).includes(Buffer.from('a.txt')), 'names are not visible in the blob');
});

t.test('tampering and substitution are IntegrityError', async (t) => {
  const m = folder();
  const ctx = ctxFor(m);
  const blob = seal(m, ctx);
  const open = (b: Uint8Array, c: VlobContext = ctx, key: Uint8Array = workspaceKey) => () => openVlob(b, c, key, verifyKeyOf);

  integrity(t, open(blob, ctx, randomBytes(32)), /decryption failed/, 'wrong workspace key');
  for (const at of [0, 30, Math.floor(blob.length / 2), blob.length - 1]) {
    const flipped = Uint8Array.from(blob);
    flipped[at]! ^= 0x01;
    integrity(t, open(flipped), /decryption failed/, `flipped byte at ${at}`);
  }
  integrity(t, open(blob.subarray(0, blob.length - 1)), /decryption failed/, 'truncated blob');
  integrity(t, open(new Uint8Array(0)), /decryption failed/, 'empty blob');
  integrity(t, open(blob, { ...ctx, vlobId: newId() }), /decryption failed/, 'blob served for another vlob id');
  integrity(t, open(blob, { ...ctx, version: 4 }), /decryption failed/, 'blob of another version');
  integrity(t, open(blob, { ...ctx, keyIndex: 2 }), /decryption failed/, 'other key index');
  integrity(t, open(blob, { ...ctx, realmId: newId() }), /decryption failed/, 'other realm');
  const other = folder();
  integrity(t, open(seal(other), ctx), /decryption failed/, 'another file\'s blob');
});

t.test('author and signature', async (t) => {
  const m = folder();
  const ctx = ctxFor(m);
  integrity(t, () => openVlob(seal(m, ctx), ctx, workspaceKey, () => undefined), /signed by unknown device/, 'unknown author');
  integrity(t, () => openVlob(seal(m, ctx), ctx, workspaceKey, () => mallory.keys.publicKey), /bad signature for author device/, 'verify key of another device');
  // Mallory signs but claims to be Alice.
  const payload = { v: 1, realmId, vlobId: m.id, version: ctx.version, author: alice.deviceId, timestamp: NOW, manifest: m };
  integrity(t, () => openVlob(forge(payload, ctx, mallory), ctx, workspaceKey, verifyKeyOf), /bad signature for author device/, 'signature by another key');
  // Sanity: the forge helper produces an acceptable vlob when signed by the claimed author.
  t.equal(openVlob(forge(payload, ctx), ctx, workspaceKey, verifyKeyOf).author, alice.deviceId);
});

t.test('signed content that does not match the request', async (t) => {
  const m = folder();
  const ctx = ctxFor(m);
  const base = { v: 1, realmId, vlobId: m.id, version: ctx.version, author: alice.deviceId, timestamp: NOW, manifest: m };
  const open = (blob: Uint8Array) => () => openVlob(blob, ctx, workspaceKey, verifyKeyOf);
  integrity(t, open(forge({ ...base, vlobId: newId() }, ctx)), /not the one requested/, 'embedded vlobId differs');
  integrity(t, open(forge({ ...base, version: 2 }, ctx)), /not the one requested/, 'embedded version differs');
  integrity(t, open(forge({ ...base, realmId: newId() }, ctx)), /not the one requested/, 'embedded realm differs');
  const otherManifest = { ...m, id: newId() };
  integrity(t, open(forge({ ...base, manifest: otherManifest }, ctx)), /holds manifest [0-9a-f]{32}, not/, 'manifest.id mismatch');
  integrity(t, open(forge({ ...base, manifest: { ...m, children: { '..': newId() } } }, ctx)), /device [0-9a-f]{32} signed an invalid manifest: invalid folder manifest: children\["\.\."\]/, 'member signed garbage manifest');
  integrity(t, open(forge({ ...base, v: 2 }, ctx)), /malformed payload: invalid vlob payload: v:/, 'unknown envelope version');
  integrity(t, open(forge({ ...base, extra: true }, ctx)), /malformed payload: .*Unrecognized key: "extra"/, 'extra payload field');
  const aad = Buffer.from(`coffer-vlob/1|${ctx.realmId}|${ctx.vlobId}|${ctx.version}|${ctx.keyIndex}`);
  integrity(t, open(xchachaEncrypt(workspaceKey, Uint8Array.of(0xc1), aad)), /malformed signed envelope: .*malformed msgpack/, 'garbage inside the encryption');
  integrity(t, open(xchachaEncrypt(workspaceKey, encode({ payload: encode(base), signature: new Uint8Array(10) }), aad)), /malformed signed envelope: .*signature: must be 64 bytes/, 'short signature');
});

t.test('sealVlob refuses bad input', async (t) => {
  const m = folder();
  const author = { deviceId: alice.deviceId, timestamp: NOW };
  t.throws(() => sealVlob(m, ctxFor(m, { vlobId: newId() }), author, alice.keys.secretKey, workspaceKey), { name: 'BadInputError', message: /does not match vlob id/ });
  t.throws(() => sealVlob(m, ctxFor(m, { version: 0 }), author, alice.keys.secretKey, workspaceKey), { name: 'BadInputError', message: /invalid vlob context: version/ });
  t.throws(() => sealVlob(m, ctxFor(m), { deviceId: 'me', timestamp: NOW }, alice.keys.secretKey, workspaceKey), { name: 'BadInputError', message: /invalid vlob author: deviceId/ });
  t.throws(() => sealVlob({ ...m, mode: -1 }, ctxFor(m), author, alice.keys.secretKey, workspaceKey), { name: 'BadInputError', message: /invalid folder manifest: mode/ });
  t.throws(() => openVlob(seal(m), { ...ctxFor(m), keyIndex: -1 }, workspaceKey, verifyKeyOf), BadInputError, 'bad context on open is the caller\'s error');
});
