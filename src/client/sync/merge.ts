import { MAX_NAME_BYTES } from '../../model/names.js';

/**
 * Three-way merge of a folder's children (base = what both sides started from). Both sides' new
 * entries are kept; a local delete loses against a remote change (an edit wins over a delete);
 * a name both sides bound to different entries keeps the remote one and renames the local one.
 */
export function mergeChildren(
  base: Readonly<Record<string, string>>,
  local: Readonly<Record<string, string>>,
  remote: Readonly<Record<string, string>>,
  /** The name of a conflicting copy of `name`; `seq` > 1 when earlier candidates are taken. */
  conflictName: (name: string, seq: number) => string,
  /** Entries edited on one side while the other side removed them: an edit wins over a delete. */
  edited: ReadonlySet<string> = new Set(),
): Record<string, string> {
  const result: Record<string, string> = Object.assign(Object.create(null) as Record<string, string>, remote);
  for (const [name, id] of Object.entries(local)) {
    if (base[name] === id) continue; // unchanged locally
    const theirs = remote[name];
    if (theirs === undefined || theirs === base[name] || theirs === id) {
      result[name] = id;
      continue;
    }
    result[freeConflictName(result, name, conflictName)] = id;
  }
  for (const [name, id] of Object.entries(base)) {
    if (local[name] === undefined) {
      // Deleted here: gone, unless the other side edited it meanwhile.
      if (remote[name] === id && !edited.has(id)) delete result[name];
    } else if (local[name] === id && remote[name] !== id && edited.has(id) && !Object.values(result).includes(id)) {
      // Deleted (or replaced by another entry) there, edited here: keep ours, under a conflict
      // name if the other side bound the name to something else.
      result[result[name] === undefined ? name : freeConflictName(result, name, conflictName)] = id;
    }
  }
  // An entry moved to another name locally must not stay under its old remote name too.
  const localIds = new Set(Object.values(local));
  for (const [name, id] of Object.entries(result)) {
    if (localIds.has(id) && local[name] !== id && base[name] === id && remote[name] === id) delete result[name];
  }
  return result;
}

/** The first conflict-copy name of `name` not already bound in `children`. */
export function freeConflictName(
  children: Readonly<Record<string, string>>,
  name: string,
  conflictName: (name: string, seq: number) => string,
): string {
  let seq = 1;
  while (children[conflictName(name, seq)] !== undefined) seq++;
  return conflictName(name, seq);
}

/**
 * `report.txt` -> `report (conflict ab12cd34 2026-11-30 21-05).txt`, then `… 21-05 2).txt` for a
 * second copy in the same minute. The stem is shortened (at a character boundary) so the result
 * stays a valid name of at most MAX_NAME_BYTES.
 */
export function conflictCopyName(name: string, deviceId: string, when: Date, seq = 1): string {
  const stamp = when.toISOString().slice(0, 16).replace('T', ' ').replace(':', '-');
  const dot = name.lastIndexOf('.');
  // An extension is a short suffix (`.txt`), not a hidden file's whole name (`.bashrc`).
  const [stem, ext] = dot > 0 && name.length - dot <= 16 ? [name.slice(0, dot), name.slice(dot)] : [name, ''];
  const tag = ` (conflict ${deviceId.slice(0, 8)} ${stamp}${seq > 1 ? ` ${seq}` : ''})${ext}`;
  const room = MAX_NAME_BYTES - Buffer.byteLength(tag);
  let kept = stem;
  while (Buffer.byteLength(kept) > room) kept = [...kept].slice(0, -1).join('');
  return `${kept}${tag}`;
}
