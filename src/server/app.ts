import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { CofferError } from '../errors.js';
import { errorBody, HTTP_STATUS } from '../protocol/errors.js';
import { MAX_BLOCK_BYTES, MAX_JSON_BYTES } from '../protocol/schemas.js';
import { authenticate } from './auth.js';
import type { Caller, ServerContext } from './context.js';
import type { ServerEvent } from '../protocol/events.js';
import { registerBlockRoutes } from './routes/blocks.js';
import { EventBus, registerEventRoutes } from './events.js';
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

export function buildApp(ctx: ServerContext): FastifyInstance {
  const app: FastifyInstance = Fastify({
    loggerInstance: ctx.logger as FastifyBaseLogger,
    bodyLimit: MAX_JSON_BYTES,
    return503OnClosing: true,
  });
  app.decorateRequest('rawBody', null);
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
    const known = err instanceof CofferError ? err : fastifyErrorCode(err as { code?: string; statusCode?: number });
    if (known) {
      if (known.code === 'internal' || HTTP_STATUS[known.code] >= 500) req.log.error({ err }, 'request failed');
      else req.log.info({ code: known.code, reason: known.message }, 'request refused');
      return reply.status(HTTP_STATUS[known.code]).send(errorBody(known));
    }
    req.log.error({ err }, 'unexpected error');
    return reply.status(500).send({ error: 'internal', message: 'internal server error' });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });

  const bus = new EventBus(async (orgId, realmId, userId) => (await ctx.metadata.getRole(orgId, realmId, userId)) !== null);
  const routeCtx: RouteContext = {
    ...ctx,
    publish: (orgId, event) => bus.publish(orgId, event),
    caller: async (req, orgId) => {
      const caller = await authenticate(ctx, req, orgId);
      req.caller = caller;
      return caller;
    },
  };
  registerOrgRoutes(app, routeCtx);
  registerRealmRoutes(app, routeCtx);
  registerBlockRoutes(app, routeCtx);
  registerVlobRoutes(app, routeCtx);
  registerInvitationRoutes(app, routeCtx);
  registerGroupRoutes(app, routeCtx);
  registerEventRoutes(app, routeCtx, bus);
  return app;
}

export interface RouteContext extends ServerContext {
  /** Pushes an event to the connected devices allowed to see it. */
  publish: (orgId: string, event: ServerEvent) => void;
  /** Authenticates the request for the organization named in its path. */
  caller: (req: FastifyRequest, orgId: string) => Promise<Caller>;
}
