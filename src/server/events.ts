import type { FastifyInstance } from 'fastify';
import { OrgParams, params } from './routes/params.js';
import { ROUTES } from '../protocol/schemas.js';
import type { RouteContext } from './app.js';
import type { ServerEvent } from '../protocol/events.js';

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
 * reconnecting client catches up from its realm checkpoint. In-process today: several instances
 * need a shared bus (PostgreSQL LISTEN/NOTIFY).
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

  /** Delivers to the organization's devices allowed to see it (realm members; the greeter for invitations). */
  publish(orgId: string, event: ServerEvent): void {
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

  endAll(): void {
    for (const s of this.subscribers) s.end();
    this.subscribers.clear();
  }
}

export function registerEventRoutes(app: FastifyInstance, ctx: RouteContext, bus: EventBus): void {
  app.addHook('preClose', (done) => {
    bus.endAll();
    done();
  });

  app.get(ROUTES.events, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write('retry: 2000\n\n');
    const heartbeat = setInterval(() => res.write(': ping\n\n'), 15_000);
    heartbeat.unref();
    const unsubscribe = bus.subscribe({
      ...caller,
      send: (event) => res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`),
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
