import cliProgress from 'cli-progress';

/**
 * Upload progress for long operations: a bar on a terminal (cli-progress), plain lines otherwise
 * (logs and CI), at most one every few seconds.
 */
export interface UploadProgress {
  update(pendingBytes: number, pendingEntries: number): void;
  stop(): void;
}

function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}

export function uploadProgress(label: string, stream: NodeJS.WriteStream = process.stderr): UploadProgress {
  let total = 0;
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: `${label} [{bar}] {percentage}% | {done}/{totalMiB} MiB | {entries} entries left`, hideCursor: true, stream, clearOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(pendingBytes, pendingEntries) {
        total = Math.max(total, pendingBytes);
        const payload = { done: mib(total - pendingBytes), totalMiB: mib(total), entries: pendingEntries };
        if (!started) {
          bar.start(Math.max(1, total), 0, payload);
          started = true;
        }
        bar.setTotal(Math.max(1, total));
        bar.update(total - pendingBytes, payload);
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let last = 0;
  return {
    update(pendingBytes, pendingEntries) {
      total = Math.max(total, pendingBytes);
      if (Date.now() - last < 5000) return;
      last = Date.now();
      stream.write(`${label}: ${mib(total - pendingBytes)}/${mib(total)} MiB uploaded, ${pendingEntries} entries left\n`);
    },
    stop() {},
  };
}
