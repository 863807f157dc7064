/**
 * A real desktop for end-to-end tests: Xvfb (a free display, chosen by Xvfb itself), a real file
 * manager (Debian's pcmanfm) in a real window, keyboard input with xdotool, screenshots with
 * ImageMagick's `import` and text read back from them with tesseract (OCR).
 *
 * No window manager: pcmanfm and its dialogs map at the top-left corner and xdotool gives them the
 * input focus itself. Every process runs in its own process group and is killed with it, and the
 * file manager gets a private HOME/XDG tree in a temp dir (no state leaks in or out, no session bus,
 * no GVFS: plain local GIO, which is what a file manager uses on a FUSE mount anyway).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import type { Test } from 'tap';

const run = promisify(execFile);

/** The Debian commands this helper needs (Makefile APT_PACKAGES: xvfb pcmanfm xdotool imagemagick tesseract-ocr). */
export const DESKTOP_COMMANDS = ['Xvfb', 'pcmanfm', 'xdotool', 'import', 'identify', 'tesseract'];

export async function missingDesktopCommands(): Promise<string[]> {
  const missing: string[] = [];
  for (const c of DESKTOP_COMMANDS) {
    try {
      await run('bash', ['-c', `command -v ${c}`]);
    } catch {
      missing.push(c);
    }
  }
  return missing;
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` until it returns a truthy value; throws with `what` (and the last value) after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T> | T, timeoutMs = 15_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      last = await check();
      if (last) return last as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last).slice(0, 500)})`);
    await sleep(intervalMs);
  }
}

/** Kills a detached child's whole process group and waits for the child to exit. */
async function killGroup(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return;
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  try {
    process.kill(-proc.pid, signal);
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, 3000);
  await exited;
  clearTimeout(timer);
}

/**
 * Whether `text` contains `token` with at most `maxErrors` edits (OCR misreads a letter now and then:
 * "pcmanfm" as "pemanfm"). Sellers' approximate substring matching. The default allows one edit per
 * 8 characters of the token, none for tokens shorter than 6.
 */
export function fuzzyIncludes(text: string, token: string, maxErrors = token.length < 6 ? 0 : Math.ceil(token.length / 8)): boolean {
  const m = token.length;
  let prev = Array.from({ length: m + 1 }, (_, i) => i);
  if (prev[m]! <= maxErrors) return true;
  for (const ch of text) {
    const cur = [0];
    for (let i = 1; i <= m; i++) {
      cur[i] = Math.min(prev[i]! + 1, cur[i - 1]! + 1, prev[i - 1]! + (token[i - 1] === ch ? 0 : 1));
    }
    if (cur[m]! <= maxErrors) return true;
    prev = cur;
  }
  return false;
}

export interface ImageStats {
  width: number;
  height: number;
  /** Number of distinct colours. */
  colours: number;
  bytes: number;
}

export interface Desktop {
  /** ":N" */
  display: string;
  /** The environment for X clients on this display. */
  env: NodeJS.ProcessEnv;
  width: number;
  height: number;
  /** Runs xdotool on this display; returns its stdout. */
  xdotool(args: string[], timeoutMs?: number): Promise<string>;
  /** Saves a PNG of the whole screen. */
  screenshot(path: string): Promise<ImageStats>;
  /** The text tesseract reads in an image (lower-cased, whitespace collapsed; sparse-text mode). */
  ocr(path: string): Promise<string>;
  stop(): Promise<void>;
}

export async function imageStats(path: string): Promise<ImageStats> {
  const r = await run('identify', ['-format', '%w %h %k %B', path], { timeout: 30_000 });
  const [w, h, k, b] = r.stdout.trim().split(/\s+/).map(Number);
  return { width: w ?? 0, height: h ?? 0, colours: k ?? 0, bytes: b ?? 0 };
}

/** Starts Xvfb on a display it picks itself (-displayfd: no race with other X servers or tests). */
export async function startDesktop(t: Test, opts: { width?: number; height?: number } = {}): Promise<Desktop> {
  const width = opts.width ?? 1024;
  const height = opts.height ?? 640;
  const proc = spawn('Xvfb', ['-displayfd', '3', '-screen', '0', `${width}x${height}x24`, '-nolisten', 'tcp', '-noreset'], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let log = '';
  proc.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const fd3 = proc.stdio[3] as NodeJS.ReadableStream;
  const display = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`Xvfb did not report a display within 15 s: ${log}`)), 15_000);
    fd3.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) {
        clearTimeout(timer);
        resolve(`:${buf.trim()}`);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Xvfb exited ${code}: ${log}`));
    });
  });
  const env: NodeJS.ProcessEnv = { ...process.env, DISPLAY: display };
  delete env.WAYLAND_DISPLAY;
  delete env.XAUTHORITY;
  const desktop: Desktop = {
    display,
    env,
    width,
    height,
    async xdotool(args, timeoutMs = 15_000) {
      try {
        const r = await run('xdotool', args, { env, timeout: timeoutMs });
        return r.stdout;
      } catch (err) {
        const e = err as { stderr?: string; killed?: boolean };
        throw new Error(`xdotool ${args.join(' ')} failed${e.killed ? ' (timed out)' : ''}: ${e.stderr ?? String(err)}`);
      }
    },
    async screenshot(path) {
      await mkdir(join(path, '..'), { recursive: true });
      await run('import', ['-display', display, '-window', 'root', `png:${path}`], { env, timeout: 30_000 });
      return imageStats(path);
    },
    async ocr(path) {
      // --psm 11 (sparse text) reads a file manager's scattered labels (status bar included) best.
      const r = await run('tesseract', [path, 'stdout', '--psm', '11'], { env: { ...env, OMP_THREAD_LIMIT: '1' }, timeout: 60_000 });
      return r.stdout.toLowerCase().replace(/\s+/g, ' ');
    },
    async stop() {
      await killGroup(proc);
    },
  };
  t.teardown(() => desktop.stop());
  return desktop;
}

export interface FileManager {
  proc: ChildProcess;
  /** The main window's X id. */
  window: string;
  /** The private HOME of this file manager. */
  home: string;
  output(): string;
  /** The main window's title (pcmanfm: the name of the folder it shows). */
  title(): Promise<string>;
  /** Waits until the main window's title is `title`. */
  waitForTitle(title: string, timeoutMs?: number): Promise<void>;
  /** Gives the main window the keyboard focus (there is no window manager to do it). */
  focus(): Promise<void>;
  /** Focuses the main window, then presses the keys (xdotool key names: ctrl+a, Return, ...). */
  keys(...keys: string[]): Promise<void>;
  /** Focuses the main window, then types text. */
  type(text: string): Promise<void>;
  /** Opens a folder by typing its path in the location bar (Ctrl+L), and waits until it is shown. */
  goTo(path: string): Promise<void>;
  /** Selects the item whose name starts with `prefix` (the view's type-ahead search). */
  select(prefix: string): Promise<void>;
  /** Waits for a dialog window titled `title`, focuses it, and returns its id. */
  dialog(title: string, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

export interface FileManagerOptions {
  /** Default application for these MIME types: a script run with the opened file's path as $1. */
  opener?: { mimeTypes: string[]; script: string };
}

/**
 * Starts pcmanfm on `dir` with a private HOME/XDG tree: list view, a window the size of the screen,
 * trash on (the default), no delete/trash confirmation dialogs, no thumbnails.
 */
export async function startFileManager(t: Test, desktop: Desktop, dir: string, opts: FileManagerOptions = {}): Promise<FileManager> {
  const home = await mkdtemp(join(tmpdir(), 'coffer-fm-home-'));
  const config = join(home, '.config');
  const data = join(home, '.local', 'share');
  const runtime = join(home, 'run');
  await mkdir(join(config, 'pcmanfm', 'default'), { recursive: true });
  await mkdir(join(config, 'libfm'), { recursive: true });
  await mkdir(join(data, 'applications'), { recursive: true });
  await mkdir(join(home, 'Templates'), { recursive: true });
  await mkdir(runtime, { recursive: true, mode: 0o700 });
  await writeFile(
    join(config, 'pcmanfm', 'default', 'pcmanfm.conf'),
    `[config]\nbm_open_method=0\n\n[volume]\nmount_on_startup=0\nmount_removable=0\nautorun=0\n\n` +
      `[ui]\nwin_width=${desktop.width}\nwin_height=${desktop.height}\nsplitter_pos=150\nside_pane_mode=1\nview_mode=list\nshow_hidden=0\n`,
  );
  await writeFile(join(config, 'libfm', 'libfm.conf'), `[config]\nsingle_click=0\nuse_trash=1\nconfirm_del=0\nconfirm_trash=0\nthumbnail_local=0\nshow_thumbnail=0\n\n[ui]\nshow_thumbnail=0\n`);
  if (opts.opener) {
    const script = join(home, 'opener.sh');
    await writeFile(script, opts.opener.script);
    await chmod(script, 0o755);
    await writeFile(
      join(data, 'applications', 'coffer-test-opener.desktop'),
      `[Desktop Entry]\nType=Application\nName=Coffer test opener\nExec=${script} %f\nMimeType=${opts.opener.mimeTypes.join(';')};\nNoDisplay=true\nTerminal=false\n`,
    );
    await writeFile(join(config, 'mimeapps.list'), `[Default Applications]\n${opts.opener.mimeTypes.map((m) => `${m}=coffer-test-opener.desktop`).join('\n')}\n`);
  }
  const env: NodeJS.ProcessEnv = {
    ...desktop.env,
    HOME: home,
    XDG_CONFIG_HOME: config,
    XDG_DATA_HOME: data,
    XDG_CACHE_HOME: join(home, '.cache'),
    XDG_STATE_HOME: join(home, '.local', 'state'),
    XDG_RUNTIME_DIR: runtime,
    XDG_CONFIG_DIRS: '/etc/xdg',
    XDG_DATA_DIRS: '/usr/local/share:/usr/share',
    // No session bus (a socket that does not exist: no autolaunch of a dbus-daemon), no GVFS.
    DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(runtime, 'no-session-bus')}`,
    GIO_USE_VFS: 'local',
    GIO_USE_VOLUME_MONITOR: 'unix',
    NO_AT_BRIDGE: '1',
    // Fixed language and time zone: the list view's dates and labels read the same on every machine.
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    TZ: 'UTC',
  };
  delete env.XDG_CURRENT_DESKTOP;
  delete env.DESKTOP_SESSION;
  const proc = spawn('pcmanfm', [dir], { env, cwd: home, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const stop = async () => {
    await killGroup(proc);
  };
  // Registered after the mount's teardown, so it runs before it (tap runs teardowns last-in first-out).
  t.teardown(async () => {
    await stop();
    await rm(home, { recursive: true, force: true });
  });

  const name = basename(dir);
  const window = (
    await waitFor(`the pcmanfm window "${name}"`, async () => {
      if (proc.exitCode !== null) throw new Error(`pcmanfm exited ${proc.exitCode}: ${out}`);
      const r = await desktop.xdotool(['search', '--onlyvisible', '--name', `^${escapeRegExp(name)}$`]).catch(() => '');
      return r.trim().split('\n')[0] ?? '';
    })
  ).trim();

  const fm: FileManager = {
    proc,
    window,
    home,
    output: () => out,
    async title() {
      return (await desktop.xdotool(['getwindowname', window])).replace(/\n$/, '');
    },
    async waitForTitle(title, timeoutMs = 15_000) {
      await waitFor(`the pcmanfm window to show "${title}"`, async () => (await fm.title()) === title, timeoutMs);
    },
    async focus() {
      await desktop.xdotool(['windowfocus', '--sync', window]);
    },
    async keys(...keys) {
      await fm.focus();
      await desktop.xdotool(['key', '--delay', '40', ...keys]);
    },
    async type(text) {
      await fm.focus();
      await desktop.xdotool(['type', '--delay', '15', text]);
    },
    async goTo(path) {
      await fm.keys('ctrl+l');
      await desktop.xdotool(['key', 'ctrl+a']);
      await desktop.xdotool(['type', '--delay', '15', path]);
      await desktop.xdotool(['key', 'Return']);
      await fm.waitForTitle(basename(path));
    },
    async select(prefix) {
      // Typing in the list starts GTK's interactive search, which selects the first match;
      // Escape closes the search box and keeps the selection.
      await fm.type(prefix);
      await desktop.xdotool(['key', 'Escape']);
    },
    async dialog(title, timeoutMs = 15_000) {
      const id = (await desktop.xdotool(['search', '--sync', '--onlyvisible', '--name', `^${escapeRegExp(title)}$`], timeoutMs)).trim().split('\n')[0] ?? '';
      await desktop.xdotool(['windowfocus', '--sync', id]);
      return id;
    },
    stop,
  };
  return fm;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
