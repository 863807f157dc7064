export * from './ids.js';
export * from './codec.js';
export * from './names.js';
export * from './manifests.js';
export * from './vlob.js';
export * from './blocks.js';
