/**
 * Public shapes of the REST API (`/mlops/api/`, see jupyter_mlops/server/openapi.yaml) and
 * the command ids of the extension.
 */

/** Command ids, `jupyter-mlops:verb-noun`. */
export const CommandIDs = {
  openPanel: 'jupyter-mlops:open-panel',
  openRun: 'jupyter-mlops:open-run',
  openSweep: 'jupyter-mlops:open-sweep',
  compareRuns: 'jupyter-mlops:compare-runs',
  insertRun: 'jupyter-mlops:insert-run',
  insertModel: 'jupyter-mlops:insert-model',
  copyRunId: 'jupyter-mlops:copy-run-id',
  attachWidget: 'jupyter-mlops:attach-widget'
};

export type RunStatus =
  | 'queued'
  | 'starting'
  | 'running'
  | 'completed'
  | 'failed'
  | 'canceled'
  | 'pruned'
  | 'lost';

/** Statuses after which a run never changes again. */
export const TERMINAL: ReadonlySet<string> = new Set([
  'completed',
  'failed',
  'canceled',
  'pruned',
  'lost'
]);

export interface IRun {
  id: string;
  name: string;
  experiment: string;
  status: RunStatus;
  params: Record<string, unknown>;
  tags: Record<string, unknown>;
  metrics: Record<string, number | null>;
  created_at: number;
  started_at: number | null;
  ended_at: number | null;
  error?: string | null;
  sweep_id?: string | null;
  trial_number?: number | null;
  stop_reason?: string | null;
  parent_id?: string | null;
  kind?: string | null;
  source?: string | null;
  target?: string | null;
  host?: string | null;
  artifacts?: IArtifact[];
}

export interface IArtifact {
  path: string;
  size: number;
}

export interface IRunsPage {
  runs: IRun[];
  cursor: string | null;
  events_cursor: string;
}

export interface IFeedEvent {
  id: number;
  kind: string;
  subject: string;
  status?: string;
  name?: string;
  [key: string]: unknown;
}

export interface IFeed {
  cursor: string;
  events: IFeedEvent[];
  metrics: { run_id: string; last_id: number; points: number }[];
  lost: string[];
  more: boolean;
}

export interface ISeries {
  step: number[];
  value: (number | null)[];
  points?: number;
}

export interface IMetrics {
  run_id: string;
  metrics: Record<string, ISeries>;
}

export interface ILogs {
  chunks: {
    id: number;
    text?: string;
    stream?: string;
    [k: string]: unknown;
  }[];
  after: number;
  more: boolean;
}

export interface ISweep {
  id: string;
  name: string;
  status: string;
  progress?: Record<string, number>;
  best?: Record<string, unknown> | null;
  [key: string]: unknown;
}

export interface IModel {
  name: string;
  version: number;
  tags: Record<string, unknown>;
  aliases: string[];
  run_id: string | null;
  ref: string;
}

export interface IDataset {
  name: string;
  version: number;
  tags?: Record<string, unknown>;
  profile?: Record<string, unknown> | null;
  [key: string]: unknown;
}

export interface IEndpoint {
  name: string;
  status: string;
  model: string;
  url: string | null;
  scoring_url?: string;
}

export interface ISlot {
  target: string;
  slot: string;
  held: boolean;
  run_id: string | null;
}

export interface ITargets {
  slots: ISlot[];
  queue: { run_id: string; name: string; target: string | null }[];
}
