import { join } from 'node:path';
import type { Command } from 'commander';
import { LocalStore } from '../client/local-store.js';
import { WorkspaceSession } from '../client/session.js';
import { ServerConnection } from '../client/connection.js';
import { deviceDataDir, findWorkspace, listWorkspaces } from '../client/workspaces.js';
import type { DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { dataDir, loadDevice, makeLogger, type GlobalOptions } from './context.js';
import { uploadProgress } from './progress.js';
import { liveMounts } from './runtime.js';

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function openStore(dataRoot: string, device: DeviceKeys, realmId: string): LocalStore {
  return new LocalStore(join(deviceDataDir(dataRoot, device), `${realmId}.sqlite`), device.localKey, Number.MAX_SAFE_INTEGER);
}

async function setPin(globals: () => GlobalOptions, workspace: string, path: string, pinned: boolean): Promise<void> {
  const g = globals();
  const device = await loadDevice(g);
  const root = dataDir(g);
  const conn = new ServerConnection(device.serverUrl, device);
  const { workspaces } = await listWorkspaces(device, root, conn).finally(() => conn.close());
  const w = findWorkspace(workspaces, workspace);
  const normalized = `/${path.split('/').filter(Boolean).join('/')}`;
  const store = openStore(root, device, w.realmId);
  store.setPin(normalized, pinned);
  store.close();
  const mounted = (await liveMounts(root)).some((m) => m.realmId === w.realmId);
  if (!mounted) {
    // No mount to apply it: download (or release) now.
    const session = await WorkspaceSession.open({ device, workspace: w.realmId, dataRoot: root, cacheBytes: 1 << 30, readOnly: false, logger: makeLogger('coffer-pin', 'warn') });
    try {
      await session.sync.drain(600_000);
      if (!pinned && session.store.listPins().length === 0) session.store.setPinnedBlocks(new Set());
    } finally {
      await session.close();
    }
  }
  process.stdout.write(`${pinned ? 'pinned' : 'unpinned'} ${normalized} in ${w.name}${mounted ? ' (the running mount applies it within seconds)' : ''}\n`);
}

export function registerStatusCommands(program: Command, globals: () => GlobalOptions): void {
  program
    .command('pin <workspace> <path>')
    .description('keep a folder (or "/" for the whole workspace) fully downloaded and exempt from cache eviction')
    .action((workspace: string, path: string) => setPin(globals, workspace, path, true));
  program
    .command('unpin <workspace> <path>')
    .description('let a pinned folder be evicted from the cache again')
    .action((workspace: string, path: string) => setPin(globals, workspace, path, false));

  program
    .command('status')
    .description('per workspace: files and bytes waiting to upload, last sync, connection state, where it is mounted')
    .option('--json', 'machine-readable output', false)
    .action(async (opts: { json: boolean }) => {
      const g = globals();
      const device = await loadDevice(g);
      const root = dataDir(g);
      const conn = new ServerConnection(device.serverUrl, device);
      const { workspaces, online } = await listWorkspaces(device, root, conn).finally(() => conn.close());
      const mounts = await liveMounts(root);
      const rows = workspaces.map((w) => {
        const store = openStore(root, device, w.realmId);
        try {
          const p = store.pendingStats();
          const last = store.getMeta('last_sync');
          const mount = mounts.find((m) => m.realmId === w.realmId);
          return {
            id: w.realmId,
            name: w.name,
            role: w.role,
            pendingEntries: p.manifests,
            pendingBlocks: p.blocks,
            pendingBytes: p.bytes,
            lastSync: last ? new Date(Number(last)).toISOString() : null,
            connection: mount ? (store.getMeta('state') ?? 'unknown') : online ? 'online (not mounted)' : 'offline',
            mountedAt: mount?.mountPoint ?? null,
          };
        } finally {
          store.close();
        }
      });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(rows)}\n`);
        return;
      }
      for (const r of rows) {
        process.stdout.write(
          `${r.name} (${r.role})${r.mountedAt ? ` mounted at ${r.mountedAt}` : ''}\n` +
            `  waiting to upload: ${r.pendingEntries} entries, ${r.pendingBlocks} blocks (${human(r.pendingBytes)})\n` +
            `  last sync: ${r.lastSync ?? 'never'}; connection: ${r.connection}\n`,
        );
      }
    });

  program
    .command('sync [workspace]')
    .description('upload pending changes; with --wait, return only when everything is on the server')
    .option('--wait', 'block until nothing is left to upload', false)
    .option('--timeout <seconds>', 'give up after this long (exit 1)', '600')
    .action(async (workspace: string | undefined, opts: { wait: boolean; timeout: string }) => {
      const g = globals();
      const device = await loadDevice(g);
      const root = dataDir(g);
      const timeoutMs = Number(opts.timeout) * 1000;
      const conn = new ServerConnection(device.serverUrl, device);
      const { workspaces } = await listWorkspaces(device, root, conn).finally(() => conn.close());
      const targets = workspace ? [findWorkspace(workspaces, workspace)] : workspaces;
      const mounts = await liveMounts(root);
      for (const w of targets) {
        const mount = mounts.find((m) => m.realmId === w.realmId);
        if (mount) {
          // The mount process syncs; watch its store until nothing is pending.
          const deadline = Date.now() + timeoutMs;
          const progress = uploadProgress(w.name);
          await new Promise((r) => setTimeout(r, 300)); // changes of the last 100 ms are saved by the mount first
          try {
            for (;;) {
              const store = openStore(root, device, w.realmId);
              const p = store.pendingStats();
              store.close();
              if (p.manifests === 0) break; // blocks are uploaded before their manifest; local-only files keep theirs
              if (!opts.wait) break;
              progress.update(p.bytes, p.manifests);
              if (Date.now() > deadline) throw new CofferError('busy', `${w.name}: still ${p.manifests} entries / ${human(p.bytes)} to upload`);
              await new Promise((r) => setTimeout(r, 250));
            }
          } finally {
            progress.stop();
          }
        } else {
          const session = await WorkspaceSession.open({ device, workspace: w.realmId, dataRoot: root, cacheBytes: 1 << 30, readOnly: false, logger: makeLogger('coffer-sync', 'warn') });
          try {
            await session.sync.drain(opts.wait ? timeoutMs : 0);
          } finally {
            await session.close();
          }
        }
        process.stdout.write(`${w.name}: up to date\n`);
      }
    });
}
