/**
 * Follows the `events` change feed of the server: one small request per tick from a cursor,
 * never a re-listing. Paused while nobody looks; backs off while the server is unreachable.
 */
import { IFeed } from './tokens';

/** Delay before the next poll after `failures` failures in a row (ms): 2 s doubling to 60 s. */
export function backoffDelay(
  failures: number,
  base = 2000,
  max = 60000
): number {
  if (failures <= 0) {
    return base;
  }
  return Math.min(max, base * 2 ** failures);
}

export interface IFeedOptions {
  /** Fetch what changed since a cursor (null: just the current cursor). */
  fetch: (since: string | null) => Promise<IFeed>;
  /** Called with every answer that holds changes. */
  onChange: (feed: IFeed) => void;
  /** Called when reachability changes: null when fine, else the error and the next retry. */
  onError?: (error: Error | null, retryMs: number) => void;
  /** Poll interval while reachable (ms). */
  interval?: number;
}

/** A poll loop on the cursor. `start(cursor)` begins; `pause()`/`resume()` follow visibility. */
export class EventFeed {
  constructor(private readonly options: IFeedOptions) {}

  get cursor(): string | null {
    return this._cursor;
  }

  get paused(): boolean {
    return this._paused;
  }

  get failures(): number {
    return this._failures;
  }

  /** Follow from `cursor` (as a listing returned it, so nothing falls in between). */
  start(cursor: string | null): void {
    this._cursor = cursor;
    this._started = true;
    this.schedule(0);
  }

  pause(): void {
    this._paused = true;
    this.clear();
  }

  resume(): void {
    if (!this._paused) {
      return;
    }
    this._paused = false;
    if (this._started) {
      this.schedule(0);
    }
  }

  dispose(): void {
    this._disposed = true;
    this.clear();
  }

  /** One poll now (tests and the panel's refresh call it); resolves when handled. */
  async tick(): Promise<void> {
    this.clear();
    if (this._disposed || this._paused || this._busy) {
      return;
    }
    this._busy = true;
    let next = this.options.interval ?? 2000;
    try {
      const feed = await this.options.fetch(this._cursor);
      const first = this._cursor === null;
      this._cursor = feed.cursor;
      if (this._failures > 0) {
        this._failures = 0;
        this.options.onError?.(null, 0);
      }
      if (
        !first &&
        (feed.events.length || feed.metrics.length || feed.lost.length)
      ) {
        this.options.onChange(feed);
      }
      if (feed.more) {
        next = 0;
      }
    } catch (error) {
      this._failures += 1;
      next = backoffDelay(this._failures);
      this.options.onError?.(error as Error, next);
    } finally {
      this._busy = false;
    }
    this.schedule(next);
  }

  private schedule(ms: number): void {
    this.clear();
    if (this._disposed || this._paused) {
      return;
    }
    this._timer = setTimeout(() => void this.tick(), ms);
  }

  private clear(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _cursor: string | null = null;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _paused = false;
  private _started = false;
  private _busy = false;
  private _disposed = false;
  private _failures = 0;
}
