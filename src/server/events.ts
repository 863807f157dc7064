import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import pg from 'pg';
import type { Logger } from 'pino';
import { OrgParams, params } from './routes/params.js';
import { ROUTES } from '../protocol/schemas.js';
import type { RouteContext } from './app.js';
import { ServerEventSchema, type ServerEvent } from '../protocol/events.js';
import { isTransientPgError } from './metadata/postgres.js';

interface Subscriber {
  orgId: string;
  userId: string;
  deviceId: string;
  send(event: ServerEvent): void;
  end(): void;
}

/**
 * Server-sent events per device: vlob changed, role changed, certificate added, invitation
 * progress. Only ids and versions travel (everything else stays encrypted in the vlobs); a
 * reconnecting client catches up from its realm checkpoint, so a lost event costs latency, never
 * data. The bus delivers to the streams connected to this instance; an `EventPublisher` decides
 * where a published event goes: this instance only (SQLite, one instance) or every instance
 * (`PostgresEventRelay`, LISTEN/NOTIFY).
 */
export class EventBus {
  private readonly subscribers = new Set<Subscriber>();

  constructor(private readonly isMember: (orgId: string, realmId: string, userId: string) => Promise<boolean>) {}

  subscribe(s: Subscriber): () => void {
    this.subscribers.add(s);
    return () => this.subscribers.delete(s);
  }

  get size(): number {
    return this.subscribers.size;
  }

  /** Delivers to the organization's devices connected here that may see it (realm members; the greeter for invitations). */
  deliver(orgId: string, event: ServerEvent): void {
    for (const s of this.subscribers) {
      if (s.orgId !== orgId) continue;
      switch (event.type) {
        case 'certificate':
          s.send(event);
          break;
        case 'invitation':
          if (event.greeterUserId === s.userId) s.send(event);
          break;
        case 'keys':
          void this.isMember(orgId, event.realmId, s.userId).then((m) => m && s.send(event), () => {});
          break;
        case 'role':
          if (event.userId === s.userId) s.send(event);
          else void this.isMember(orgId, event.realmId, s.userId).then((m) => m && s.send(event), () => {});
          break;
        case 'vlob':
          if (event.authorDeviceId === s.deviceId) break; // the author knows
          void this.isMember(orgId, event.realmId, s.userId).then((m) => m && s.send(event), () => {});
          break;
      }
    }
  }

  /** Ends every stream (shutdown; or after missed events: the devices reconnect and catch up). */
  endAll(): void {
    for (const s of this.subscribers) s.end();
    this.subscribers.clear();
  }
}

/** Where published events go. */
export interface EventPublisher {
  readonly bus: EventBus;
  publish(orgId: string, event: ServerEvent): void;
  /** Information for /readyz and /metrics. */
  state(): { mode: 'local' | 'postgres'; connected: boolean; published: number; received: number; reconnects: number; dropped: number };
  close(): Promise<void>;
}

/** One instance (SQLite): events go to the streams of this process only. */
export class LocalEventPublisher implements EventPublisher {
  private published = 0;

  constructor(readonly bus: EventBus) {}

  publish(orgId: string, event: ServerEvent): void {
    this.published++;
    this.bus.deliver(orgId, event);
  }

  state() {
    return { mode: 'local' as const, connected: true, published: this.published, received: 0, reconnects: 0, dropped: 0 };
  }

  async close(): Promise<void> {}
}

/** The PostgreSQL channel every instance listens on (NOTIFY is scoped to the database). */
export const EVENTS_CHANNEL = 'coffer_events';
/** NOTIFY payloads must stay under 8000 bytes; events are a few hundred. */
const MAX_PAYLOAD = 7900;
/** Events kept while the connection is down (then the oldest are dropped: devices poll anyway). */
const MAX_QUEUE = 1000;

interface Wire {
  /** Publishing instance (its own notifications are skipped: it delivered them already). */
  i: string;
  o: string;
  e: ServerEvent;
}

export interface PostgresRelayOptions {
  url: string;
  bus: EventBus;
  logger: Logger;
  /** Reconnection back-off bounds (default 500 ms → 10 s). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * Events across instances through PostgreSQL LISTEN/NOTIFY, on one dedicated connection per
 * instance (LISTEN needs a session; the pool's connections come and go). A published event is
 * delivered to this instance's streams at once and sent with `pg_notify` (payload: the event JSON,
 * its organization and this instance's id); every other instance delivers it to its own streams.
 * The notification is sent after the write committed, so a device woken by it finds the change.
 *
 * When the connection drops it is re-established with back-off; events published meanwhile are
 * queued and sent then. Notifications from other instances during the gap are lost, so after a
 * reconnection the local streams are ended: each device reconnects and catches up from its
 * checkpoint.
 */
export class PostgresEventRelay implements EventPublisher {
  readonly bus: EventBus;
  private readonly instanceId = randomUUID();
  private client: pg.Client | null = null;
  private queue: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private backoffMs: number;
  private closed = false;
  private counters = { published: 0, received: 0, reconnects: 0, dropped: 0 };

  private constructor(private readonly opts: PostgresRelayOptions) {
    this.bus = opts.bus;
    this.backoffMs = opts.minBackoffMs ?? 500;
  }

  /** Connects and listens (throws when the database cannot be reached: a start-up error). */
  static async start(opts: PostgresRelayOptions): Promise<PostgresEventRelay> {
    const relay = new PostgresEventRelay(opts);
    relay.client = await relay.connect();
    return relay;
  }

  private async connect(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: this.opts.url, keepAlive: true, connectionTimeoutMillis: 5000, application_name: 'coffer-events' });
    c.on('error', (err) => this.lost(c, err));
    c.on('end', () => this.lost(c, null));
    c.on('notification', (msg) => {
      if (msg.channel === EVENTS_CHANNEL && msg.payload !== undefined) this.received(msg.payload);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${EVENTS_CHANNEL}`);
    } catch (err) {
      c.removeAllListeners('end');
      await c.end().catch(() => undefined);
      throw err;
    }
    return c;
  }

  private received(payload: string): void {
    let wire: Wire;
    try {
      wire = JSON.parse(payload) as Wire;
    } catch {
      this.opts.logger.warn('ignoring a malformed event notification');
      return;
    }
    if (wire.i === this.instanceId) return;
    const event = ServerEventSchema.safeParse(wire.e);
    if (typeof wire.o !== 'string' || !event.success) {
      this.opts.logger.warn('ignoring a malformed event notification');
      return;
    }
    this.counters.received++;
    this.bus.deliver(wire.o, event.data);
  }

  private lost(c: pg.Client, err: Error | null): void {
    if (c !== this.client) return;
    this.client = null;
    c.end().catch(() => undefined);
    if (this.closed) return;
    this.opts.logger.warn({ err: err?.message }, 'event relay: PostgreSQL connection lost, reconnecting');
    this.reconnectLater();
  }

  private reconnectLater(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.reconnect();
    }, this.backoffMs);
    this.timer.unref();
    this.backoffMs = Math.min(this.opts.maxBackoffMs ?? 10_000, this.backoffMs * 2);
  }

  private async reconnect(): Promise<void> {
    let c: pg.Client;
    try {
      c = await this.connect();
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'event relay: reconnection failed');
      this.reconnectLater();
      return;
    }
    if (this.closed) {
      c.removeAllListeners('end');
      await c.end().catch(() => undefined);
      return;
    }
    this.client = c;
    this.backoffMs = this.opts.minBackoffMs ?? 500;
    this.counters.reconnects++;
    this.opts.logger.info({ queued: this.queue.length }, 'event relay: reconnected');
    // Other instances' events of the gap are lost: make the devices here reconnect and catch up.
    this.bus.endAll();
    const pending = this.queue;
    this.queue = [];
    for (const p of pending) this.notify(p);
  }

  private enqueue(payload: string): void {
    if (this.queue.length >= MAX_QUEUE) {
      this.queue.shift();
      this.counters.dropped++;
    }
    this.queue.push(payload);
  }

  private notify(payload: string): void {
    const c = this.client;
    if (!c) {
      this.enqueue(payload);
      return;
    }
    c.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, payload]).catch((err: Error) => {
      if (this.closed) return;
      if (isTransientPgError(err)) {
        // The connection is going (or too slow): send it again on the next one.
        this.opts.logger.warn({ err: err.message }, 'event relay: notify failed, queued until reconnected');
        this.enqueue(payload);
        this.lost(c, err);
      } else {
        this.counters.dropped++;
        this.opts.logger.error({ err: err.message }, 'event relay: notify refused, event delivered on this instance only');
      }
    });
  }

  publish(orgId: string, event: ServerEvent): void {
    this.counters.published++;
    this.bus.deliver(orgId, event);
    const payload = JSON.stringify({ i: this.instanceId, o: orgId, e: event } satisfies Wire);
    if (Buffer.byteLength(payload) > MAX_PAYLOAD) {
      this.counters.dropped++;
      this.opts.logger.warn({ bytes: payload.length }, 'event too large for NOTIFY: delivered on this instance only');
      return;
    }
    this.notify(payload);
  }

  state() {
    return { mode: 'postgres' as const, connected: this.client !== null, ...this.counters };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const c = this.client;
    this.client = null;
    if (!c) return;
    c.removeAllListeners('end');
    // end() waits for the server's goodbye: bounded, the database may be gone.
    await Promise.race([c.end().catch(() => undefined), new Promise((r) => setTimeout(r, 2000).unref())]);
  }
}

export function registerEventRoutes(app: FastifyInstance, ctx: RouteContext, bus: EventBus, onBytes: (n: number) => void = () => {}): void {
  // Streams never end by themselves: close() would wait for them forever.
  app.addHook('preClose', (done) => {
    bus.endAll();
    done();
  });

  app.get(ROUTES.events, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': req.id,
    });
    const write = (text: string) => {
      onBytes(Buffer.byteLength(text));
      res.write(text);
    };
    write('retry: 2000\n\n');
    const heartbeat = setInterval(() => write(': ping\n\n'), 15_000);
    heartbeat.unref();
    const unsubscribe = bus.subscribe({
      ...caller,
      send: (event) => write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`),
      end: () => {
        clearInterval(heartbeat);
        res.end();
      },
    });
    req.raw.on('close', () => {
      clearInterval(heartbeat);
      unsubscribe();
    });
  });
}
