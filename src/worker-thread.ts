import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Starts the worker script `name` that sits beside the module whose URL is `base` (its
 * `import.meta.url`). Compiled (dist/*.js) it is a plain Worker. Under tsx (tests, bench: the URL
 * ends in .ts) the worker must register tsx itself: on Node 20 tsx only installs its hooks in the main
 * thread, so an inherited --import=tsx is not enough.
 */
export function startWorker(base: string, name: string, options?: WorkerOptions): Worker {
  const dev = base.endsWith('.ts');
  const script = new URL(`./${name}.${dev ? 'ts' : 'js'}`, base);
  if (!dev) return new Worker(script, options);
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(script.href)}); });`;
  return new Worker(boot, { ...options, eval: true });
}
