import { request as httpRequest, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Logger } from 'pino';
import { buildAuthHeader } from '../protocol/auth.js';
import { ServerEventSchema, type ServerEvent } from '../protocol/events.js';
import { ROUTES, routePath } from '../protocol/schemas.js';
import type { DeviceIdentity } from './connection.js';

/**
 * The device's server-sent event stream, reconnected with backoff. Events only wake the sync engine
 * up (it then asks the server what changed since its checkpoint), so a lost event costs latency,
 * never data; polling stays as the fallback.
 */
export class EventStream {
  private req: ClientRequest | null = null;
  private stopped = false;
  private backoffMs = 500;
  private timer: NodeJS.Timeout | null = null;
  connected = false;

  constructor(
    private readonly serverUrl: string,
    private readonly device: DeviceIdentity,
    private readonly onEvent: (event: ServerEvent) => void,
    private readonly onConnect: () => void,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.req?.destroy();
  }

  private retry(): void {
    this.connected = false;
    if (this.stopped || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, this.backoffMs);
    this.timer.unref();
    this.backoffMs = Math.min(10_000, this.backoffMs * 2);
  }

  private connect(): void {
    const path = routePath(ROUTES.events, { org: this.device.orgId });
    const url = new URL(path, this.serverUrl);
    const headers = {
      accept: 'text/event-stream',
      authorization: buildAuthHeader(this.device.orgId, this.device.deviceId, this.device.signingKey, 'GET', path, null),
    };
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method: 'GET', headers });
    this.req = req;
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        this.logger.warn({ status: res.statusCode }, 'event stream refused; polling only');
        res.resume();
        this.retry();
        return;
      }
      this.connected = true;
      this.backoffMs = 500;
      this.onConnect();
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        if (buffer.length > 1024 * 1024) {
          res.destroy(); // a hostile server cannot make us buffer without end
          return;
        }
        let cut: number;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trim())
            .join('\n');
          if (!data) continue;
          try {
            const parsed = ServerEventSchema.safeParse(JSON.parse(data));
            if (parsed.success) this.onEvent(parsed.data);
            else this.logger.warn('ignoring a malformed server event');
          } catch {
            this.logger.warn('ignoring a malformed server event');
          }
        }
      });
      res.on('end', () => this.retry());
      res.on('error', () => this.retry());
    });
    req.on('error', () => this.retry());
    req.end();
  }
}
