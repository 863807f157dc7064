/** Block storage behind an interface: a local folder (embedded default), S3 or Swift (native API) for scale-out. */
export interface BlockStore {
  /** Stores the bytes atomically (a reader never sees a partial block). */
  put(orgId: string, blockId: string, data: Buffer): Promise<void>;
  /** The stored bytes, or null when absent. */
  get(orgId: string, blockId: string): Promise<Buffer | null>;
  /**
   * The same, read into memory from `alloc(size)` (a buffer the caller reuses); stores that cannot
   * choose where their bytes land leave it out.
   */
  getInto?(orgId: string, blockId: string, alloc: (size: number) => Buffer): Promise<Buffer | null>;
  /** Removes the block; absent already is fine (garbage collection may run twice). */
  delete(orgId: string, blockId: string): Promise<void>;
  close(): Promise<void>;
}
