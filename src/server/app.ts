import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { CofferError } from '../errors.js';
import { errorBody, HTTP_STATUS } from '../protocol/errors.js';
import { MAX_BLOCK_BYTES, MAX_JSON_BYTES, ROUTES } from '../protocol/schemas.js';
import { authenticate } from './auth.js';
import type { Caller, ServerContext } from './context.js';
import type { ServerEvent } from '../protocol/events.js';
import { registerBlockGcRoutes, registerBlockRoutes } from './routes/blocks.js';
import { EventBus, LocalEventPublisher, registerEventRoutes, type EventPublisher } from './events.js';
import { AuthFailureLimiter, Metrics, registerOps, requestId, type AuthLimitOptions } from './ops.js';
import { registerGroupRoutes } from './routes/groups.js';
import { registerInvitationRoutes } from './routes/invitations.js';
import { registerOrgRoutes } from './routes/orgs.js';
import { registerRealmRoutes } from './routes/realms.js';
import { registerVlobRoutes } from './routes/vlobs.js';

/** Fastify errors that are the client's fault, mapped onto our codes. */
function fastifyErrorCode(err: { code?: string; statusCode?: number }): CofferError | null {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new CofferError('too_large', 'request body too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new CofferError('bad_request', 'unsupported or inconsistent request body');
    default:
      if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
        return new CofferError('bad_request', 'malformed request');
      }
      return null;
  }
}

/**
 * A full disk under the block store or the metadata database (ENOSPC, EDQUOT, SQLITE_FULL) is not an
 * internal error: it is the retryable `no_space` (HTTP 507), so that clients keep their data and try
 * again later instead of treating the server as broken (found by test/e2e/disk-full.test.ts).
 */
function storageFullError(err: unknown): CofferError | null {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') return new CofferError('no_space', 'the server is out of storage space; retry later');
  return null;
}

export interface AppOptions {
  /** Where events go (default: this process only). Build it with `newEventBus`. */
  events?: EventPublisher;
  /** Peers allowed to set X-Forwarded-For (fastify trustProxy): addresses/CIDRs or true. Default none. */
  trustProxy?: string | boolean;
  /** Limit on authentication failures per client address (default 20 per minute, loopback exempt). */
  authLimit?: AuthLimitOptions;
  /** Metrics registry (default: a new one). */
  metrics?: Metrics;
}

/** The event bus of an app: deliveries to this instance's streams, membership checked in the store. */
export function newEventBus(ctx: Pick<ServerContext, 'metadata'>): EventBus {
  return new EventBus(async (orgId, realmId, userId) => (await ctx.metadata.getRole(orgId, realmId, userId)) !== null);
}

export function buildApp(ctx: ServerContext, opts: AppOptions = {}): FastifyInstance {
  const app: FastifyInstance = Fastify({
    loggerInstance: ctx.logger as FastifyBaseLogger,
    bodyLimit: MAX_JSON_BYTES,
    return503OnClosing: true,
    // Malformed HTTP (framing, oversized headers, timeouts) gets the same error body as every other
    // refusal ({error: <code>, message}), not Fastify's default ({error: "Bad Request", statusCode}).
    // Router-level refusals (a malformed percent-encoding, a path parameter over maxParamLength): same.
    frameworkErrors: (err, _req, reply) => {
      void (reply as unknown as FastifyReply).status(400).send(errorBody(new CofferError('bad_request', err.message)));
    },
    clientErrorHandler: (err, socket) => {
      if ((err as NodeJS.ErrnoException).code === 'ECONNRESET' || socket.destroyed) return;
      const body = JSON.stringify(errorBody(new CofferError('bad_request', 'malformed HTTP request')));
      if (socket.writable) socket.write(`HTTP/1.1 400 Bad Request\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
      socket.destroy(err);
    },
    genReqId: requestId,
    trustProxy: opts.trustProxy ?? false,
  });
  const metrics = opts.metrics ?? new Metrics();
  const events = opts.events ?? new LocalEventPublisher(newEventBus(ctx));
  const bus = events.bus;
  registerOps(app, ctx, {
    metrics,
    limiter: new AuthFailureLimiter(opts.authLimit),
    info: () => {
      const s = events.state();
      return { events: { mode: s.mode, connected: s.connected } };
    },
  });
  metrics.addGauge({ name: 'coffer_event_streams', help: 'Event streams (SSE) connected to this instance.', value: () => bus.size });
  metrics.addGauge({ name: 'coffer_events_published_total', help: 'Events published by this instance.', type: 'counter', value: () => events.state().published });
  metrics.addGauge({ name: 'coffer_events_received_total', help: 'Events received from other instances (PostgreSQL NOTIFY).', type: 'counter', value: () => events.state().received });
  metrics.addGauge({ name: 'coffer_event_relay_connected', help: '1 when the event relay is connected (always 1 with one instance).', value: () => (events.state().connected ? 1 : 0) });
  metrics.addGauge({ name: 'coffer_event_relay_reconnects_total', help: 'Reconnections of the event relay.', type: 'counter', value: () => events.state().reconnects });
  app.decorateRequest('rawBody', null);
  app.decorateRequest('rawBodyDigest', null);
  app.decorateRequest('caller', null);

  // Bodies are kept raw: the device signature covers the exact bytes received.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: MAX_JSON_BYTES }, (req, body, done) => {
    const raw = body as Buffer;
    req.rawBody = raw;
    try {
      done(null, raw.length === 0 ? undefined : JSON.parse(raw.toString('utf8')));
    } catch {
      done(new CofferError('bad_request', 'body is not valid JSON'), undefined);
    }
  });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: MAX_BLOCK_BYTES }, (req, body, done) => {
    req.rawBody = body as Buffer;
    done(null, body);
  });
  app.addContentTypeParser('*', (_req, _payload, done) => {
    done(new CofferError('bad_request', 'unsupported content type (use application/json or application/octet-stream)'), undefined);
  });

  app.setErrorHandler((err, req, reply) => {
    const known = err instanceof CofferError ? err : (storageFullError(err) ?? fastifyErrorCode(err as { code?: string; statusCode?: number }));
    if (known) {
      metrics.error(known.code);
      if (known.code === 'internal' || HTTP_STATUS[known.code] >= 500) req.log.error({ err }, 'request failed');
      else req.log.info({ code: known.code, reason: known.message }, 'request refused');
      return reply.status(HTTP_STATUS[known.code]).send(errorBody(known));
    }
    metrics.error('internal');
    req.log.error({ err }, 'unexpected error');
    return reply.status(500).send({ error: 'internal', message: 'internal server error' });
  });
  app.setNotFoundHandler((req, reply) => {
    metrics.error('not_found');
    reply.status(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });

  const routeCtx: RouteContext = {
    ...ctx,
    publish: (orgId, event) => events.publish(orgId, event),
    caller: async (req, orgId) => {
      const caller = await authenticate(ctx, req, orgId);
      req.caller = caller;
      return caller;
    },
  };
  registerOrgRoutes(app, routeCtx);
  registerRealmRoutes(app, routeCtx);
  registerBlockRoutes(app, routeCtx);
  registerBlockGcRoutes(app, routeCtx);
  registerVlobRoutes(app, routeCtx);
  registerInvitationRoutes(app, routeCtx);
  registerGroupRoutes(app, routeCtx);
  registerEventRoutes(app, routeCtx, bus, (n) => metrics.bytesOut.inc({ route: ROUTES.events }, n));
  return app;
}

export interface RouteContext extends ServerContext {
  /** Pushes an event to the connected devices allowed to see it. */
  publish: (orgId: string, event: ServerEvent) => void;
  /** Authenticates the request for the organization named in its path. */
  caller: (req: FastifyRequest, orgId: string) => Promise<Caller>;
}
