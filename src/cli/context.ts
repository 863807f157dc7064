import { readdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pino, type Logger } from 'pino';
import { loadDeviceFile, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';

/** Global options every command understands (flags win over environment, environment over XDG defaults). */
export interface GlobalOptions {
  configDir?: string;
  dataDir?: string;
  deviceFile?: string;
}

export function configDir(g: GlobalOptions): string {
  return g.configDir ?? process.env.COFFER_CONFIG_DIR ?? join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'coffer');
}

export function dataDir(g: GlobalOptions): string {
  return g.dataDir ?? process.env.COFFER_DATA_DIR ?? join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'coffer');
}

export function devicesDir(g: GlobalOptions): string {
  return join(configDir(g), 'devices');
}

export function makeLogger(name: string, defaultLevel = 'info'): Logger {
  return pino({ name, level: process.env.COFFER_LOG_LEVEL ?? defaultLevel }, pino.destination(2));
}

/** The password from COFFER_PASSWORD, else asked on the terminal without echo. */
export async function readPassword(prompt = 'Password: '): Promise<string> {
  const env = process.env.COFFER_PASSWORD;
  if (env !== undefined) return env;
  if (!process.stdin.isTTY) throw new CofferError('bad_request', 'no password: set COFFER_PASSWORD or run in a terminal');
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
    const out = rl as unknown as { _writeToOutput: (s: string) => void };
    process.stderr.write(prompt);
    out._writeToOutput = () => {}; // no echo
    rl.question('', (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolve(answer);
    });
  });
}

/** The device file to use: the flag, COFFER_DEVICE_FILE, or the only one in the config directory. */
export async function deviceFilePath(g: GlobalOptions): Promise<string> {
  const explicit = g.deviceFile ?? process.env.COFFER_DEVICE_FILE;
  if (explicit) return explicit;
  const dir = devicesDir(g);
  let files: string[] = [];
  try {
    files = (await readdir(dir)).filter((f) => f.endsWith('.device'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (files.length === 1) return join(dir, files[0]!);
  if (files.length === 0) throw new CofferError('not_found', `no device file in ${dir}: run "coffer org bootstrap" first or pass --device-file`);
  throw new CofferError('bad_request', `several device files in ${dir}: choose one with --device-file`);
}

export async function loadDevice(g: GlobalOptions): Promise<DeviceKeys> {
  const file = await deviceFilePath(g);
  return loadDeviceFile(file, await readPassword(`Password for ${file}: `));
}
