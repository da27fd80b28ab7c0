/**
 * Main-area views: a run (charts, params, live log, artifacts, Cancel), a comparison of
 * runs and a sweep (leaderboard, metric against each parameter).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { MetricChart, ScatterChart } from './charts';
import { h, replace } from './dom';
import { formatDuration, formatValue, runDuration, sideBySide } from './format';
import { statusIcon } from './panel';
import { apiUrl, requestAPI } from './request';
import { ILogs, IMetrics, IRun, TERMINAL } from './tokens';

/** Poll interval of an open view of an active run (ms). */
const LIVE_INTERVAL = 1500;
/** Points per metric series asked from the server (it downsamples, keeping min/max). */
const MAX_POINTS = 1000;
/** Log characters kept in the view (older text is dropped from the top). */
const MAX_LOG = 200_000;

function table(
  rows: [string, string][],
  cls: string,
  label: string
): HTMLElement {
  return h(
    'table',
    { class: `mlops-table ${cls}`, 'aria-label': label },
    h(
      'tbody',
      {},
      ...rows.map(([k, v]) =>
        h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v))
      )
    )
  );
}

/** The entries of `record` with `prefix` added to each key. */
function prefixed(
  record: Record<string, unknown> | undefined,
  prefix: string
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  Object.entries(record || {}).forEach(([k, v]) => {
    out[prefix + k] = v;
  });
  return out;
}

/** A base for views that poll while visible and while there is something live. */
abstract class LiveView extends Widget {
  constructor(protected readonly settings: ServerConnection.ISettings) {
    super();
    this.addClass('mlops-view');
  }

  protected abstract refresh(): Promise<boolean>;

  /** Re-read now; keep polling while `refresh` says the subject is still live. */
  async poll(): Promise<void> {
    if (this._timer) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    // One refresh at a time: two at once would read (and append) the same log chunks.
    if (this.isDisposed || this._busy) {
      return;
    }
    this._busy = true;
    let live = false;
    try {
      live = await this.refresh();
    } catch (error) {
      this.node.dataset.error = String(error);
      live = true;
    } finally {
      this._busy = false;
    }
    if (live && !this.isDisposed && this.isVisible) {
      this._timer = setTimeout(() => void this.poll(), LIVE_INTERVAL);
    }
    this._live = live;
  }

  protected onAfterShow(msg: Message): void {
    if (this._live) {
      void this.poll();
    }
  }

  protected onAfterHide(msg: Message): void {
    if (this._timer) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  dispose(): void {
    if (this._timer) {
      clearTimeout(this._timer);
    }
    super.dispose();
  }

  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _live = true;
  private _busy = false;
}

/** Where a view's links go (a parent run, a sweep). */
export interface IViewLinks {
  openRun(id: string): void;
  openSweep(id: string): void;
}

export class RunView extends LiveView {
  constructor(
    settings: ServerConnection.ISettings,
    readonly runId: string,
    private readonly links?: IViewLinks
  ) {
    super(settings);
    this.addClass('mlops-run-view');
    this.id = `mlops-run-${runId}`;
    this.title.label = `Run ${runId}`;
    this.title.closable = true;
    this._header = h('header', { class: 'mlops-view-header' });
    this._charts = h('div', { class: 'mlops-charts', 'aria-label': 'Metrics' });
    this._params = h('div', { class: 'mlops-params' });
    this._log = h('pre', {
      class: 'mlops-log',
      tabindex: '0',
      'aria-label': 'Run log'
    });
    this._artifacts = h('ul', {
      class: 'mlops-artifacts',
      'aria-label': 'Artifacts'
    });
    this._lineage = h('div', { class: 'mlops-lineage' });
    replace(
      this.node,
      this._header,
      h('h3', {}, 'Metrics'),
      this._charts,
      h(
        'div',
        { class: 'mlops-columns' },
        h('div', {}, h('h3', {}, 'Params and tags'), this._params),
        h('div', {}, h('h3', {}, 'Artifacts'), this._artifacts),
        h('div', {}, h('h3', {}, 'Lineage'), this._lineage)
      ),
      h('h3', {}, 'Log'),
      this._log
    );
  }

  protected async refresh(): Promise<boolean> {
    const id = encodeURIComponent(this.runId);
    const [run, metrics, logs] = await Promise.all([
      requestAPI<IRun>(`runs/${id}`, this.settings),
      requestAPI<IMetrics>(
        `runs/${id}/metrics?max_points=${MAX_POINTS}`,
        this.settings
      ),
      requestAPI<ILogs>(
        `runs/${id}/logs?after=${this._logAfter}`,
        this.settings
      )
    ]);
    this.title.label = run.name;
    this.title.caption = `${run.name} (${run.id})`;
    this.renderHeader(run);
    this.renderCharts(metrics);
    this.renderParams(run);
    this.renderArtifacts(run);
    this.renderLineage(run);
    if (logs.chunks.length) {
      this._logText += logs.chunks.map(c => c.text ?? '').join('');
      if (this._logText.length > MAX_LOG) {
        this._logText = this._logText.slice(-MAX_LOG);
      }
      const follow =
        this._log.scrollTop + this._log.clientHeight >=
        this._log.scrollHeight - 4;
      this._log.textContent = this._logText;
      if (follow) {
        this._log.scrollTop = this._log.scrollHeight;
      }
    }
    this._logAfter = logs.after;
    this.node.dataset.status = run.status;
    // Terminal and the log read to its end: nothing more will come.
    return !TERMINAL.has(run.status) || logs.more;
  }

  private renderHeader(run: IRun): void {
    const active = !TERMINAL.has(run.status);
    const cancel = h(
      'button',
      {
        type: 'button',
        class: 'mlops-cancel jp-mod-styled jp-mod-warn jp-Button'
      },
      'Cancel run'
    );
    cancel.addEventListener('click', () => void this.cancel(run));
    replace(
      this._header,
      h(
        'h2',
        {},
        statusIcon(run.status),
        ' ',
        h('span', { class: 'mlops-run-title' }, run.name)
      ),
      h(
        'div',
        { class: 'mlops-run-facts' },
        h('span', { class: 'mlops-run-status' }, run.status),
        ` · ${run.experiment} · ${run.id} · ${formatDuration(runDuration(run, Date.now() / 1000))}`,
        run.stop_reason ? ` · ${run.stop_reason}` : ''
      ),
      run.error ? h('pre', { class: 'mlops-run-error' }, run.error) : null,
      active ? cancel : null
    );
  }

  private async cancel(run: IRun): Promise<void> {
    const answer = await showDialog({
      title: 'Cancel run',
      body: `Cancel ${run.name}? Its process is stopped.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel run' })
      ]
    });
    if (answer.button.accept) {
      await requestAPI(
        `runs/${encodeURIComponent(run.id)}/cancel`,
        this.settings,
        {
          method: 'POST'
        }
      );
      void this.poll();
    }
  }

  private renderCharts(metrics: IMetrics): void {
    for (const [key, series] of Object.entries(metrics.metrics)) {
      const lines = [{ label: key, series }];
      const chart = this._chartsByKey.get(key);
      if (chart) {
        chart.update(lines);
      } else {
        const created = new MetricChart(key, lines);
        this._chartsByKey.set(key, created);
        this._charts.appendChild(created.node);
      }
    }
    if (!this._chartsByKey.size) {
      replace(
        this._charts,
        h('p', { class: 'mlops-empty' }, 'No metrics logged yet.')
      );
    } else {
      this._charts.querySelector('.mlops-empty')?.remove();
    }
  }

  private renderParams(run: IRun): void {
    const rows: [string, string][] = [
      ...Object.entries(run.params || {}).map(
        ([k, v]) => [k, formatValue(v)] as [string, string]
      ),
      ...Object.entries(run.tags || {}).map(
        ([k, v]) => [`tag ${k}`, formatValue(v)] as [string, string]
      )
    ];
    replace(
      this._params,
      rows.length
        ? table(rows, 'mlops-params-table', 'Params and tags')
        : h('p', { class: 'mlops-empty' }, 'None.')
    );
  }

  /** Where the run came from: its source, target and host, its parent run or sweep. */
  private renderLineage(run: IRun): void {
    const link = (label: string, open: () => void) => {
      const button = h(
        'button',
        { type: 'button', class: 'mlops-link' },
        label
      );
      button.addEventListener('click', open);
      return button;
    };
    const facts: [string, Node | string][] = [
      ['kind', formatValue(run.kind)],
      ['source', formatValue(run.source)],
      ['target', formatValue(run.target)],
      ['host', formatValue(run.host)]
    ];
    if (run.parent_id) {
      const parent = run.parent_id;
      facts.push([
        'parent run',
        link(parent, () => this.links?.openRun(parent))
      ]);
    }
    if (run.sweep_id) {
      const sweep = run.sweep_id;
      facts.push([
        'sweep',
        link(`${sweep} · trial ${run.trial_number ?? '?'}`, () =>
          this.links?.openSweep(sweep)
        )
      ]);
    }
    replace(
      this._lineage,
      h(
        'table',
        { class: 'mlops-table mlops-lineage-table', 'aria-label': 'Lineage' },
        h(
          'tbody',
          {},
          ...facts.map(([k, v]) =>
            h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v))
          )
        )
      )
    );
  }

  private renderArtifacts(run: IRun): void {
    const items = (run.artifacts || []).map(a =>
      h(
        'li',
        {},
        h(
          'a',
          {
            href: apiUrl(
              this.settings,
              `runs/${encodeURIComponent(run.id)}/artifacts/${a.path.split('/').map(encodeURIComponent).join('/')}`
            ),
            download: a.path.split('/').pop() || 'artifact'
          },
          a.path
        ),
        h('span', { class: 'mlops-size' }, ` ${formatValue(a.size)} B`)
      )
    );
    replace(
      this._artifacts,
      ...(items.length ? items : [h('li', { class: 'mlops-empty' }, 'None.')])
    );
  }

  dispose(): void {
    this._chartsByKey.forEach(c => c.dispose());
    super.dispose();
  }

  private _header: HTMLElement;
  private _charts: HTMLElement;
  private _params: HTMLElement;
  private _log: HTMLElement;
  private _artifacts: HTMLElement;
  private _lineage: HTMLElement;
  private _chartsByKey = new Map<string, MetricChart>();
  private _logAfter = 0;
  private _logText = '';
}

export class CompareView extends LiveView {
  constructor(
    settings: ServerConnection.ISettings,
    readonly runIds: string[]
  ) {
    super(settings);
    this.addClass('mlops-compare-view');
    this.id = `mlops-compare-${runIds.join('-')}`;
    this.title.label = `Compare ${runIds.length} runs`;
    this.title.closable = true;
    this._charts = h('div', { class: 'mlops-charts', 'aria-label': 'Metrics' });
    this._params = h('div', { class: 'mlops-params' });
    replace(
      this.node,
      h('h2', {}, this.title.label),
      h('h3', {}, 'Metrics'),
      this._charts,
      h('h3', {}, 'Params, tags and final metrics'),
      this._params
    );
  }

  protected async refresh(): Promise<boolean> {
    const runs = await Promise.all(
      this.runIds.map(id =>
        requestAPI<IRun>(`runs/${encodeURIComponent(id)}`, this.settings)
      )
    );
    const metrics = await Promise.all(
      this.runIds.map(id =>
        requestAPI<IMetrics>(
          `runs/${encodeURIComponent(id)}/metrics?max_points=${MAX_POINTS}`,
          this.settings
        )
      )
    );
    const keys = new Set<string>();
    metrics.forEach(m => Object.keys(m.metrics).forEach(k => keys.add(k)));
    for (const key of [...keys].sort()) {
      const lines = runs
        .map((run, i) => ({ label: run.name, series: metrics[i].metrics[key] }))
        .filter(l => l.series);
      const chart = this._chartsByKey.get(key);
      if (chart) {
        chart.update(lines);
      } else {
        const created = new MetricChart(key, lines);
        this._chartsByKey.set(key, created);
        this._charts.appendChild(created.node);
      }
    }
    const records = runs.map(r => ({
      ...r.params,
      ...prefixed(r.tags, 'tag '),
      ...prefixed(r.metrics, 'metric '),
      status: r.status
    }));
    const diff = sideBySide(records);
    replace(
      this._params,
      h(
        'table',
        {
          class: 'mlops-table mlops-compare-table',
          'aria-label': 'Runs side by side'
        },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            h('th', { scope: 'col' }, ''),
            ...runs.map(r => h('th', { scope: 'col', title: r.id }, r.name))
          )
        ),
        h(
          'tbody',
          {},
          ...diff.map(row =>
            h(
              'tr',
              {
                class: row.differs ? 'mlops-diff' : '',
                title: row.differs ? 'differs' : ''
              },
              h('th', { scope: 'row' }, row.key),
              ...row.values.map(v => h('td', {}, v))
            )
          )
        )
      )
    );
    return runs.some(r => !TERMINAL.has(r.status));
  }

  dispose(): void {
    this._chartsByKey.forEach(c => c.dispose());
    super.dispose();
  }

  private _charts: HTMLElement;
  private _params: HTMLElement;
  private _chartsByKey = new Map<string, MetricChart>();
}

export class SweepView extends LiveView {
  constructor(
    settings: ServerConnection.ISettings,
    readonly sweepId: string,
    private readonly openRun: (id: string) => void
  ) {
    super(settings);
    this.addClass('mlops-sweep-view');
    this.id = `mlops-sweep-${sweepId}`;
    this.title.label = `Sweep ${sweepId}`;
    this.title.closable = true;
  }

  protected async refresh(): Promise<boolean> {
    const sweep = await requestAPI<{
      name: string;
      status: string;
      leaderboard: Record<string, unknown>[];
    }>(`sweeps/${encodeURIComponent(this.sweepId)}`, this.settings);
    this.title.label = sweep.name;
    const board = sweep.leaderboard;
    const columns = board.length
      ? Object.keys(board[0]).filter(c => c !== 'run_id')
      : [];
    const metric = columns.find(c => columns.includes(`best_${c}`)) ?? '';
    const params = columns.filter(c => c.startsWith('param.'));
    this._scatters.forEach(s => s.dispose());
    this._scatters = params.map(
      p =>
        new ScatterChart(
          p.slice('param.'.length),
          metric,
          board.map(r => r[p]),
          board.map(r =>
            typeof r[metric] === 'number' ? (r[metric] as number) : null
          )
        )
    );
    const rows = board.map(r => {
      const tr = h(
        'tr',
        {
          tabindex: '0',
          class: 'mlops-trial',
          'data-run-id': String(r.run_id)
        },
        ...columns.map(c => h('td', {}, formatValue(r[c])))
      );
      const open = () => this.openRun(String(r.run_id));
      tr.addEventListener('dblclick', open);
      tr.addEventListener('keydown', e => {
        if (e.key === 'Enter') {
          open();
        }
      });
      return tr;
    });
    replace(
      this.node,
      h(
        'h2',
        {},
        statusIcon(sweep.status),
        ' ',
        sweep.name,
        ` · ${sweep.status}`
      ),
      h('h3', {}, 'Leaderboard'),
      h(
        'table',
        { class: 'mlops-table mlops-leaderboard', 'aria-label': 'Leaderboard' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ...columns.map(c =>
              h('th', { scope: 'col' }, c.replace(/^param\./, ''))
            )
          )
        ),
        h('tbody', {}, ...rows)
      ),
      h('h3', {}, `${metric} against each parameter`),
      h('div', { class: 'mlops-charts' }, ...this._scatters.map(s => s.node))
    );
    return !TERMINAL.has(sweep.status);
  }

  dispose(): void {
    this._scatters.forEach(s => s.dispose());
    super.dispose();
  }

  private _scatters: ScatterChart[] = [];
}
