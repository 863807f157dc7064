import { readFileSync } from 'node:fs';
import { Model, parseLog, Errno, type Op } from './random-ops.js';
const ops = parseLog(readFileSync(process.argv[2]!, 'utf8'));
const m = new Model(true);
const slots: any[] = [];
const watch = Number(process.argv[3] ?? 7);
let openedAt = -1;
const tryDo = (f: () => any) => { try { return f(); } catch (e) { if (e instanceof Errno) return e.code; throw e; } };
for (const [i, op] of ops.entries()) {
  let note = '';
  switch (op.op) {
    case 'open': { if (slots[op.slot]) { m.close(slots[op.slot]); slots[op.slot] = undefined; } const r = tryDo(() => m.open(op.path, op.acc, !!op.creat, !!op.excl, !!op.trunc, !!op.append, !!op.direct)); if (typeof r !== 'string') { slots[op.slot] = r; if (op.slot === watch) { openedAt = i; } } note = typeof r === 'string' ? r : 'ok'; break; }
    case 'close': if (slots[op.slot]) { m.close(slots[op.slot]); slots[op.slot] = undefined; } break;
    case 'remount': for (let s = 0; s < 8; s++) if (slots[s]) { m.close(slots[s]); slots[s] = undefined; } break;
    case 'write': if (slots[op.slot]) tryDo(() => m.write(slots[op.slot], op.offset, Buffer.alloc(op.length))); break;
    case 'ftruncate': if (slots[op.slot]) tryDo(() => m.ftruncate(slots[op.slot], op.size)); break;
    case 'par': for (const s of op.ops) { if (!slots[s.slot]) continue; if (s.op === 'write') tryDo(() => m.write(slots[s.slot], s.offset, Buffer.alloc(s.length))); if (s.op === 'ftruncate') tryDo(() => m.ftruncate(slots[s.slot], s.size)); } break;
    case 'truncate': note = tryDo(() => m.truncate(op.path, op.size)) ?? 'ok'; break;
    case 'mkdir': note = tryDo(() => m.mkdir(op.path)) ?? 'ok'; break;
    case 'rmdir': note = tryDo(() => m.rmdir(op.path)) ?? 'ok'; break;
    case 'unlink': note = tryDo(() => m.unlink(op.path)) ?? 'ok'; break;
    case 'rename': note = tryDo(() => m.rename(op.from, op.to)) ?? 'ok'; break;
    default: break;
  }
  if (i >= openedAt && openedAt >= 0 && (op.op === 'rename' || op.op === 'unlink' || op.op === 'rmdir' || op.op === 'mkdir' || ('slot' in op && op.slot === watch) || op.op === 'open' || op.op === 'close' || op.op === 'remount')) {
    const d = slots[watch];
    console.log(i, JSON.stringify(op), note, '| slot path:', d ? m.pathOf(d.node) ?? `(hidden in ${d.node.hiddenIn ? m.pathOf(d.node.hiddenIn) : '?'})` : '-');
  }
}
