/**
 * The left-sidebar panel: Experiments (runs, filters, sweeps), Datasets, Models, Endpoints,
 * Compute. One page of runs is listed on open; afterwards only what the `events` feed names
 * is fetched again.
 */
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { h, replace } from './dom';
import { EventFeed } from './feed';
import {
  STATUS_GLYPH,
  formatDuration,
  formatValue,
  keyMetric,
  runDuration
} from './format';
import { ApiError, requestAPI } from './request';
import {
  IDataset,
  IEndpoint,
  IFeed,
  IModel,
  IRun,
  IRunsPage,
  ISweep,
  ITargets
} from './tokens';

/** Runs listed per page (more on demand). */
export const PAGE = 100;
/** Above this many changed runs in one tick, re-read the first page instead of each run. */
const MAX_SINGLE_FETCHES = 20;

export interface IPanelActions {
  openRun(id: string): void;
  openSweep(id: string): void;
  compare(ids: string[]): void;
}

/** A status glyph with its word as the accessible name. */
export function statusIcon(status: string): HTMLElement {
  return h(
    'span',
    {
      class: `mlops-status mlops-status-${status}`,
      role: 'img',
      'aria-label': status,
      title: status
    },
    STATUS_GLYPH[status] ?? '•'
  );
}

export class SidebarPanel extends Widget {
  constructor(
    private readonly settings: ServerConnection.ISettings,
    private readonly actions: IPanelActions
  ) {
    super();
    this.id = 'jupyter-mlops-sidebar';
    this.addClass('mlops-sidebar');
    this.title.caption = 'ML runs, models and compute';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'jupyter-mlops');
    this.feed = new EventFeed({
      fetch: since =>
        requestAPI<IFeed>(
          since ? `events?since=${encodeURIComponent(since)}` : 'events',
          this.settings
        ),
      onChange: feed => void this.applyFeed(feed),
      onError: (error, retry) => this.showError(error, retry)
    });
    this.build();
  }

  /** Emitted with every batch of changes (open run views follow it). */
  get changed(): ISignal<this, IFeed> {
    return this._changed;
  }

  /** Runs currently selected for comparison. */
  get selected(): string[] {
    return [...this._selected];
  }

  /** The run or model a context menu was opened on. */
  contextRun: string | null = null;
  contextModel: { name: string; version: number } | null = null;

  readonly feed: EventFeed;

  /** Read everything once and start following the feed. */
  async load(): Promise<void> {
    const t0 = performance.now();
    try {
      const page = await this.loadRuns();
      this.feed.start(page.events_cursor);
      this.showError(null, 0);
    } catch (error) {
      this.showError(error as Error, 0);
      this.feed.start(null);
    }
    this.loadTime = performance.now() - t0;
    this.node.dataset.loaded = String(Math.round(this.loadTime));
    // The other sections do not hold up the runs.
    void this.loadSweeps();
    void this.loadRegistry();
    void this.loadTargets();
    void this.loadExperiments();
  }

  loadTime = 0;

  protected onAfterShow(msg: Message): void {
    this.feed.resume();
    if (!this._loaded) {
      this._loaded = true;
      void this.load();
    }
  }

  protected onAfterHide(msg: Message): void {
    this.feed.pause();
  }

  dispose(): void {
    this.feed.dispose();
    document.removeEventListener('visibilitychange', this._onVisibility);
    super.dispose();
  }

  // -- building -----------------------------------------------------------------------

  private build(): void {
    this._status = h('div', {
      class: 'mlops-sidebar-status',
      role: 'status',
      'aria-live': 'polite'
    });
    this._text = h('input', {
      class: 'mlops-filter-text jp-mod-styled',
      type: 'search',
      placeholder: 'Filter runs',
      'aria-label': 'Filter runs by text'
    });
    this._tag = h('input', {
      class: 'mlops-filter-tag jp-mod-styled',
      type: 'search',
      placeholder: 'tag k:v',
      'aria-label': 'Filter runs by tag (key:value)'
    });
    this._statusFilter = h(
      'select',
      {
        class: 'mlops-filter-status jp-mod-styled',
        'aria-label': 'Filter runs by status'
      },
      h('option', { value: '' }, 'any status'),
      ...Object.keys(STATUS_GLYPH).map(s => h('option', { value: s }, s))
    );
    this._experimentFilter = h(
      'select',
      {
        class: 'mlops-filter-experiment jp-mod-styled',
        'aria-label': 'Filter runs by experiment'
      },
      h('option', { value: '' }, 'all exp.')
    );
    let timer: ReturnType<typeof setTimeout> | null = null;
    const refilter = () => {
      if (timer) {
        clearTimeout(timer);
      }
      timer = setTimeout(() => void this.loadRuns(), 250);
    };
    this._text.addEventListener('input', refilter);
    this._tag.addEventListener('input', refilter);
    this._statusFilter.addEventListener('change', refilter);
    this._experimentFilter.addEventListener('change', refilter);
    this._compare = h(
      'button',
      {
        class: 'mlops-compare jp-mod-styled jp-Button',
        disabled: true,
        type: 'button'
      },
      'Compare'
    );
    this._compare.addEventListener('click', () =>
      this.actions.compare(this.selected)
    );
    this._runs = h('ul', { class: 'mlops-runs-list', 'aria-label': 'Runs' });
    this._more = h(
      'button',
      {
        class: 'mlops-more jp-mod-styled jp-Button',
        type: 'button',
        hidden: true
      },
      'Load more runs'
    );
    this._more.addEventListener('click', () => void this.loadMore());
    this._sweeps = h('ul', {
      class: 'mlops-sweeps-list',
      'aria-label': 'Sweeps'
    });
    this._datasets = h('ul', {
      class: 'mlops-datasets-list',
      'aria-label': 'Datasets'
    });
    this._models = h('ul', {
      class: 'mlops-models-list',
      'aria-label': 'Models'
    });
    this._endpoints = h('ul', {
      class: 'mlops-endpoints-list',
      'aria-label': 'Endpoints'
    });
    this._compute = h('div', { class: 'mlops-compute' });

    const experiments = this.section(
      'Experiments',
      h(
        'div',
        { class: 'mlops-filters' },
        this._text,
        this._tag,
        this._statusFilter,
        this._experimentFilter
      ),
      h('div', { class: 'mlops-runs-toolbar' }, this._compare),
      this._runs,
      this._more,
      h('h3', { class: 'mlops-subheading' }, 'Sweeps'),
      this._sweeps
    );
    replace(
      this.node,
      h(
        'header',
        { class: 'mlops-sidebar-header' },
        h('h2', {}, 'ML workspace'),
        this._status
      ),
      experiments,
      this.section('Datasets', this._datasets),
      this.section('Models', this._models),
      this.section('Endpoints', this._endpoints),
      this.section('Compute', this._compute)
    );
    document.addEventListener('visibilitychange', this._onVisibility);
  }

  private _onVisibility = () => {
    if (document.visibilityState === 'hidden') {
      this.feed.pause();
    } else if (this.isVisible) {
      this.feed.resume();
    }
  };

  /** A collapsible section whose header is a real button (keyboard, aria-expanded). */
  private section(title: string, ...content: HTMLElement[]): HTMLElement {
    const id = `mlops-section-${title.toLowerCase()}`;
    const body = h('div', { class: 'mlops-section-body', id });
    content.forEach(c => body.appendChild(c));
    const toggle = h(
      'button',
      {
        class: 'mlops-section-toggle',
        type: 'button',
        'aria-expanded': 'true',
        'aria-controls': id
      },
      title
    );
    toggle.addEventListener('click', () => {
      const open = toggle.getAttribute('aria-expanded') !== 'true';
      toggle.setAttribute('aria-expanded', String(open));
      body.hidden = !open;
    });
    return h(
      'section',
      {
        class: `mlops-section mlops-section-${title.toLowerCase()}`,
        'aria-label': title
      },
      h('h3', { class: 'mlops-section-title' }, toggle),
      body
    );
  }

  // -- runs ---------------------------------------------------------------------------

  private query(cursor?: string | null): string {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (this._text.value.trim()) {
      params.set('q', this._text.value.trim());
    }
    if (this._statusFilter.value) {
      params.append('status', this._statusFilter.value);
    }
    if (this._experimentFilter.value) {
      params.set('experiment', this._experimentFilter.value);
    }
    if (this._tag.value.includes(':')) {
      params.append('tag', this._tag.value.trim());
    }
    if (cursor) {
      params.set('cursor', cursor);
    }
    return `runs?${params}`;
  }

  /** Whether a run (fetched after a change) belongs in the filtered list. */
  private passes(run: IRun): boolean {
    if (this._statusFilter.value && run.status !== this._statusFilter.value) {
      return false;
    }
    if (
      this._experimentFilter.value &&
      run.experiment !== this._experimentFilter.value
    ) {
      return false;
    }
    const text = this._text.value.trim().toLowerCase();
    if (text) {
      const hay =
        `${run.name} ${run.id} ${JSON.stringify(run.params)}`.toLowerCase();
      if (!hay.includes(text)) {
        return false;
      }
    }
    const tag = this._tag.value.trim();
    if (tag.includes(':')) {
      const [key, ...rest] = tag.split(':');
      if (String((run.tags || {})[key]) !== rest.join(':')) {
        return false;
      }
    }
    return true;
  }

  private async loadRuns(): Promise<IRunsPage> {
    const query = this.query();
    this._query = query;
    const page = await requestAPI<IRunsPage>(query, this.settings);
    if (this._query !== query) {
      return page; // a newer filter was typed meanwhile
    }
    this._runsById = new Map(page.runs.map(r => [r.id, r]));
    this._order = page.runs.map(r => r.id);
    this._cursor = page.cursor;
    this.renderRuns();
    return page;
  }

  private async loadMore(): Promise<void> {
    if (!this._cursor) {
      return;
    }
    const page = await requestAPI<IRunsPage>(
      this.query(this._cursor),
      this.settings
    );
    for (const run of page.runs) {
      if (!this._runsById.has(run.id)) {
        this._order.push(run.id);
      }
      this._runsById.set(run.id, run);
    }
    this._cursor = page.cursor;
    this.renderRuns();
  }

  private renderRuns(): void {
    const now = Date.now() / 1000;
    const rows = document.createDocumentFragment();
    for (const id of this._order) {
      const run = this._runsById.get(id);
      if (run) {
        rows.appendChild(this.runRow(run, now));
      }
    }
    this._runs.replaceChildren(rows);
    if (!this._order.length) {
      this._runs.appendChild(h('li', { class: 'mlops-empty' }, 'No runs yet.'));
    }
    this._more.hidden = !this._cursor;
    this.node.dataset.runs = String(this._order.length);
  }

  private runRow(run: IRun, now: number): HTMLElement {
    const metric = keyMetric(run);
    const check = h('input', {
      type: 'checkbox',
      class: 'mlops-select',
      'aria-label': `Select ${run.name} to compare`,
      checked: this._selected.has(run.id)
    });
    check.addEventListener('change', () => {
      if (check.checked) {
        this._selected.add(run.id);
      } else {
        this._selected.delete(run.id);
      }
      this.updateCompare();
    });
    const open = h(
      'button',
      {
        type: 'button',
        class: 'mlops-run-open',
        title: `${run.name} (${run.id}) — ${run.experiment}`,
        'aria-label': `Open run ${run.name}, ${run.status}`
      },
      statusIcon(run.status),
      h('span', { class: 'mlops-run-name' }, run.name)
    );
    open.addEventListener('click', () => this.actions.openRun(run.id));
    const row = h(
      'li',
      {
        class: 'mlops-run-row',
        'data-run-id': run.id,
        'data-status': run.status
      },
      check,
      open,
      h(
        'span',
        { class: 'mlops-row-meta' },
        h(
          'span',
          { class: 'mlops-run-duration' },
          formatDuration(runDuration(run, now))
        ),
        h(
          'span',
          { class: 'mlops-run-metric', title: metric ? metric[0] : '' },
          metric ? `${metric[0]} ${formatValue(metric[1])}` : ''
        )
      )
    );
    row.addEventListener('contextmenu', () => {
      this.contextRun = run.id;
    });
    return row;
  }

  private updateCompare(): void {
    const n = this._selected.size;
    this._compare.disabled = n < 2;
    this._compare.textContent = n ? `Compare ${n} runs` : 'Compare';
  }

  // -- the feed -----------------------------------------------------------------------

  /** Apply one batch of changes: fetch only the runs it names, and the small lists. */
  async applyFeed(feed: IFeed): Promise<void> {
    const changed = new Set<string>();
    const created: string[] = [];
    let sweeps = false;
    let registry = false;
    let targets = false;
    for (const event of feed.events) {
      if (event.kind === 'run.created') {
        created.push(event.subject);
        targets = true;
      } else if (event.kind.startsWith('run.')) {
        changed.add(event.subject);
        targets = true;
      } else if (event.kind.startsWith('sweep.')) {
        sweeps = true;
      } else {
        registry = true;
      }
    }
    for (const m of feed.metrics) {
      if (this._runsById.has(m.run_id)) {
        changed.add(m.run_id);
      }
    }
    for (const id of feed.lost) {
      const run = this._runsById.get(id);
      if (run) {
        run.status = 'lost';
      }
    }
    created.forEach(id => changed.add(id));
    const ids = [...changed].filter(
      id => this._runsById.has(id) || created.includes(id)
    );
    if (ids.length > MAX_SINGLE_FETCHES) {
      await this.loadRuns();
    } else {
      const runs = await Promise.all(
        ids.map(id =>
          requestAPI<IRun>(
            `runs/${encodeURIComponent(id)}`,
            this.settings
          ).catch(() => null)
        )
      );
      for (const run of runs) {
        if (!run) {
          continue;
        }
        const known = this._runsById.has(run.id);
        if (!known && !this.passes(run)) {
          continue;
        }
        this._runsById.set(run.id, run);
        if (!known) {
          this._order.unshift(run.id);
        }
      }
      this.renderRuns();
    }
    if (
      sweeps ||
      feed.events.some(e => e.kind.startsWith('run.') && e.sweep_id)
    ) {
      void this.loadSweeps();
    } else if (ids.some(id => this._runsById.get(id)?.sweep_id)) {
      void this.loadSweeps();
    }
    if (registry) {
      void this.loadRegistry();
    }
    if (targets) {
      void this.loadTargets();
    }
    if (created.length) {
      void this.loadExperiments();
    }
    this._changed.emit(feed);
  }

  private showError(error: Error | null, retry: number): void {
    if (!error) {
      this._status.textContent = '';
      this._status.classList.remove('mlops-error');
      return;
    }
    const unreachable = error instanceof ApiError && error.status === 0;
    this._status.classList.add('mlops-error');
    this._status.textContent =
      unreachable && retry
        ? `Server unreachable; retrying in ${Math.round(retry / 1000)} s.`
        : error.message;
  }

  // -- other sections -----------------------------------------------------------------

  private async loadExperiments(): Promise<void> {
    const data = await requestAPI<{
      experiments: { name: string; runs: number }[];
    }>('experiments', this.settings).catch(() => null);
    if (!data) {
      return;
    }
    const current = this._experimentFilter.value;
    replace(
      this._experimentFilter,
      h('option', { value: '' }, 'all exp.'),
      ...data.experiments.map(e =>
        h('option', { value: e.name }, `${e.name} (${e.runs})`)
      )
    );
    this._experimentFilter.value = current;
  }

  private async loadSweeps(): Promise<void> {
    const data = await requestAPI<{ sweeps: ISweep[] }>(
      'sweeps',
      this.settings
    ).catch(() => null);
    if (!data) {
      return;
    }
    const rows = data.sweeps.map(sweep => {
      const p = sweep.progress || {};
      const done = (p.done || 0) + (p.pruned || 0) + (p.failed || 0);
      const total = p.total || 0;
      const best = sweep.best || null;
      const metric = best
        ? Object.keys(best).find(k => !['run_id', 'name', 'params'].includes(k))
        : undefined;
      const open = h(
        'button',
        {
          type: 'button',
          class: 'mlops-sweep-open',
          'aria-label': `Open sweep ${sweep.name}`
        },
        statusIcon(sweep.status),
        h('span', { class: 'mlops-run-name' }, sweep.name)
      );
      open.addEventListener('click', () => this.actions.openSweep(sweep.id));
      return h(
        'li',
        { class: 'mlops-sweep-row', 'data-sweep-id': sweep.id },
        open,
        h(
          'span',
          { class: 'mlops-row-meta' },
          h('progress', {
            max: String(total || 1),
            value: String(done),
            'aria-label': `${done} of ${total} trials done`
          }),
          h('span', { class: 'mlops-sweep-count' }, `${done}/${total}`),
          h(
            'span',
            { class: 'mlops-run-metric' },
            best && metric ? `best ${metric} ${formatValue(best[metric])}` : ''
          )
        )
      );
    });
    replace(
      this._sweeps,
      ...(rows.length
        ? rows
        : [h('li', { class: 'mlops-empty' }, 'No sweeps.')])
    );
  }

  private async loadRegistry(): Promise<void> {
    const [models, datasets, endpoints] = await Promise.all([
      requestAPI<{ models: IModel[] }>('models', this.settings).catch(
        () => null
      ),
      requestAPI<{ datasets: IDataset[] }>('datasets', this.settings).catch(
        () => null
      ),
      requestAPI<{ endpoints: IEndpoint[] }>('endpoints', this.settings).catch(
        () => null
      )
    ]);
    const serving = new Map<string, string[]>();
    for (const e of endpoints?.endpoints ?? []) {
      serving.set(e.model, [...(serving.get(e.model) ?? []), e.name]);
    }
    if (models) {
      const rows = models.models.map(m => {
        const row = h(
          'li',
          { class: 'mlops-model-row', 'data-model': m.ref, tabindex: '0' },
          h('span', { class: 'mlops-run-name' }, `${m.name}:${m.version}`),
          ...Object.entries(m.tags || {}).map(([k, v]) =>
            h('span', { class: 'mlops-chip' }, `${k}=${formatValue(v)}`)
          ),
          ...(m.aliases || []).map(a =>
            h('span', { class: 'mlops-chip mlops-alias' }, `@${a}`)
          ),
          ...(serving.get(m.ref) ?? []).map(e =>
            h(
              'span',
              {
                class: 'mlops-chip mlops-serving',
                title: 'served by endpoint'
              },
              `→ ${e}`
            )
          )
        );
        row.addEventListener('contextmenu', () => {
          this.contextModel = { name: m.name, version: m.version };
        });
        return row;
      });
      replace(
        this._models,
        ...(rows.length
          ? rows
          : [h('li', { class: 'mlops-empty' }, 'No models.')])
      );
    }
    if (datasets) {
      const rows = datasets.datasets.map(d => {
        const profile = (d.profile || {}) as Record<string, unknown>;
        const shape = ['rows', 'columns']
          .filter(k => profile[k] !== undefined)
          .map(k => `${formatValue(profile[k])} ${k}`)
          .join(', ');
        return h(
          'li',
          { class: 'mlops-dataset-row' },
          h('span', { class: 'mlops-run-name' }, `${d.name}:${d.version}`),
          h('span', { class: 'mlops-run-metric' }, shape)
        );
      });
      replace(
        this._datasets,
        ...(rows.length
          ? rows
          : [h('li', { class: 'mlops-empty' }, 'No datasets.')])
      );
    }
    if (endpoints) {
      const rows = endpoints.endpoints.map(e =>
        h(
          'li',
          { class: 'mlops-endpoint-row' },
          statusIcon(e.status),
          h('span', { class: 'mlops-run-name' }, e.name),
          h('span', { class: 'mlops-chip' }, e.model),
          h(
            'span',
            { class: 'mlops-url', title: e.scoring_url || '' },
            e.url || e.status
          )
        )
      );
      replace(
        this._endpoints,
        ...(rows.length
          ? rows
          : [h('li', { class: 'mlops-empty' }, 'No endpoints.')])
      );
    }
  }

  private async loadTargets(): Promise<void> {
    const data = await requestAPI<ITargets>('targets', this.settings).catch(
      () => null
    );
    if (!data) {
      return;
    }
    const name = (id: string | null) =>
      id ? (this._runsById.get(id)?.name ?? id) : 'free';
    replace(
      this._compute,
      h(
        'ul',
        { class: 'mlops-slots', 'aria-label': 'Slots' },
        ...data.slots.map(s =>
          h(
            'li',
            { class: `mlops-slot ${s.held ? 'mlops-held' : ''}` },
            h('span', { class: 'mlops-run-name' }, `${s.target} ${s.slot}`),
            h(
              'span',
              { class: 'mlops-run-metric' },
              s.held ? `in use: ${name(s.run_id)}` : 'free'
            )
          )
        )
      ),
      h(
        'div',
        { class: 'mlops-queue' },
        data.queue.length
          ? `Queue: ${data.queue.map(q => q.name).join(', ')}`
          : 'Queue: empty'
      )
    );
  }

  private _changed = new Signal<this, IFeed>(this);
  private _loaded = false;
  private _query = '';
  private _cursor: string | null = null;
  private _runsById = new Map<string, IRun>();
  private _order: string[] = [];
  private _selected = new Set<string>();
  private _status!: HTMLElement;
  private _text!: HTMLInputElement;
  private _tag!: HTMLInputElement;
  private _statusFilter!: HTMLSelectElement;
  private _experimentFilter!: HTMLSelectElement;
  private _compare!: HTMLButtonElement;
  private _more!: HTMLButtonElement;
  private _runs!: HTMLElement;
  private _sweeps!: HTMLElement;
  private _datasets!: HTMLElement;
  private _models!: HTMLElement;
  private _endpoints!: HTMLElement;
  private _compute!: HTMLElement;
}
