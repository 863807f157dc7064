/**
 * Names that stay on this device: editor swap and lock files, temporary downloads, OS litter. They
 * are visible in the mount but never uploaded; renaming such a file to an ordinary name (an editor's
 * save) syncs it like any other.
 */
export const DEFAULT_PREVENT_SYNC = [
  '*.swp',
  '*.swo',
  '*.swx',
  '*~',
  '.#*',
  '~$*',
  '.~lock.*#',
  '*.tmp',
  '*.part',
  '*.crdownload',
  '.DS_Store',
  '._*',
  'Thumbs.db',
  'desktop.ini',
  '.fuse_hidden*',
  '.Trash-*',
];

/** `*` and `?` globs over a whole name (case-sensitive, as the mount is). */
export function compilePatterns(patterns: readonly string[]): (name: string) => boolean {
  const regexes = patterns
    .map((p) => p.trim())
    .filter((p) => p.length > 0)
    .map((p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 's'));
  return (name) => regexes.some((r) => r.test(name));
}

/** The patterns in effect: COFFER_PREVENT_SYNC (comma-separated) replaces the defaults; "" disables them. */
export function preventSyncFromEnv(env: NodeJS.ProcessEnv = process.env): string[] {
  const v = env.COFFER_PREVENT_SYNC;
  return v === undefined ? DEFAULT_PREVENT_SYNC : v.split(',');
}
