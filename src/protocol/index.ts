export * from './auth.js';
export * from './errors.js';
export * from './schemas.js';
export * from './events.js';
