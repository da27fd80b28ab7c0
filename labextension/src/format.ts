/**
 * Pure helpers of the views: durations, status glyphs, key metrics, parameter differences.
 * No DOM here, so jest tests them directly.
 */
import { IRun, TERMINAL } from './tokens';

/** A glyph and a word per status; the word is the accessible label. */
export const STATUS_GLYPH: Record<string, string> = {
  queued: '◷',
  starting: '◔',
  running: '●',
  completed: '✓',
  failed: '✗',
  canceled: '⊘',
  pruned: '✂',
  lost: '?'
};

/** `1.2 s`, `3 m 05 s`, `2 h 07 m`; `—` when there is nothing to measure. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '—';
  }
  const s = Math.max(0, seconds);
  if (s < 10) {
    return `${s.toFixed(1)} s`;
  }
  if (s < 60) {
    return `${Math.round(s)} s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  }
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
}

/** How long a run took, or has been going (seconds), at `now` (seconds since epoch). */
export function runDuration(run: IRun, now: number): number | null {
  if (!run.started_at) {
    return null;
  }
  const end = run.ended_at ?? (TERMINAL.has(run.status) ? null : now);
  return end === null ? null : end - run.started_at;
}

/** A number short enough for a row: 4 significant digits. */
export function formatValue(value: unknown): string {
  if (typeof value === 'number') {
    if (Number.isInteger(value)) {
      return String(value);
    }
    const abs = Math.abs(value);
    return abs !== 0 && (abs < 1e-3 || abs >= 1e6)
      ? value.toExponential(3)
      : String(Number(value.toPrecision(4)));
  }
  if (value === null || value === undefined) {
    return '—';
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/**
 * The metric a row shows: `preferred` when the run has it, else the first metric by name.
 */
export function keyMetric(
  run: IRun,
  preferred?: string
): [string, number | null] | null {
  const metrics = run.metrics || {};
  if (preferred && preferred in metrics) {
    return [preferred, metrics[preferred]];
  }
  const keys = Object.keys(metrics).sort();
  return keys.length ? [keys[0], metrics[keys[0]]] : null;
}

/** One row of a side-by-side table: a key, each run's value, and whether they differ. */
export interface IDiffRow {
  key: string;
  values: string[];
  differs: boolean;
}

/** The union of the runs' keys (sorted), each with its values and whether they differ. */
export function sideBySide(records: Record<string, unknown>[]): IDiffRow[] {
  const keys = new Set<string>();
  records.forEach(r => Object.keys(r || {}).forEach(k => keys.add(k)));
  return [...keys].sort().map(key => {
    const values = records.map(r =>
      r && key in r ? formatValue(r[key]) : '—'
    );
    return { key, values, differs: new Set(values).size > 1 };
  });
}

/** Does a run match a text filter (name, id, experiment, tag values), case-insensitive? */
export function matchesText(run: IRun, text: string): boolean {
  const needle = text.trim().toLowerCase();
  if (!needle) {
    return true;
  }
  const hay = [
    run.name,
    run.id,
    run.experiment,
    ...Object.entries(run.tags || {}).map(([k, v]) => `${k}:${v}`)
  ]
    .join(' ')
    .toLowerCase();
  return hay.includes(needle);
}

/** The code a context action inserts into the notebook (a valid Python string literal). */
export function pythonString(text: string): string {
  return JSON.stringify(text);
}
