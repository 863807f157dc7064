/**
 * Three-way merge of a folder's children (base = what both sides started from). Both sides' new
 * entries are kept; a local delete loses against a remote change (an edit wins over a delete);
 * a name both sides bound to different entries keeps the remote one and renames the local one.
 */
export function mergeChildren(
  base: Readonly<Record<string, string>>,
  local: Readonly<Record<string, string>>,
  remote: Readonly<Record<string, string>>,
  conflictName: (name: string) => string,
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
    let alt = conflictName(name);
    for (let n = 2; result[alt] !== undefined; n++) alt = conflictName(`${name} ${n}`);
    result[alt] = id;
  }
  for (const [name, id] of Object.entries(base)) {
    if (local[name] === undefined) {
      // Deleted here: gone, unless the other side edited it meanwhile.
      if (remote[name] === id && !edited.has(id)) delete result[name];
    } else if (local[name] === id && remote[name] === undefined && edited.has(id) && !Object.values(result).includes(id)) {
      // Deleted there, edited here: keep ours.
      let alt = name;
      for (let n = 2; result[alt] !== undefined; n++) alt = conflictName(`${name} ${n}`);
      result[alt] = id;
    }
  }
  // An entry moved to another name locally must not stay under its old remote name too.
  const localIds = new Set(Object.values(local));
  for (const [name, id] of Object.entries(result)) {
    if (localIds.has(id) && local[name] !== id && base[name] === id && remote[name] === id) delete result[name];
  }
  return result;
}

/** `report.txt` -> `report (conflict ab12cd34 2026-11-30 21-05).txt` */
export function conflictCopyName(name: string, deviceId: string, when: Date): string {
  const stamp = when.toISOString().slice(0, 16).replace('T', ' ').replace(':', '-');
  const dot = name.lastIndexOf('.');
  const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ''];
  return `${stem} (conflict ${deviceId.slice(0, 8)} ${stamp})${ext}`;
}
