/**
 * Line charts with uPlot (small, fast with many points), coloured from JupyterLab's CSS
 * variables so they follow the light and dark themes.
 */
import uPlot from 'uplot';

import { h } from './dom';
import { ISeries } from './tokens';

/** The value of a JupyterLab CSS variable, with a fallback outside JupyterLab. */
export function cssVar(name: string, fallback: string): string {
  const value = getComputedStyle(document.body).getPropertyValue(name).trim();
  return value || fallback;
}

/** A tick label: short, and never a rounded "0" on a log axis. */
export function formatTick(value: number): string {
  if (value === 0) {
    return '0';
  }
  const abs = Math.abs(value);
  return abs < 1e-3 || abs >= 1e5
    ? value.toExponential(0)
    : String(Number(value.toPrecision(3)));
}

/** Is a value a power of ten (the labelled ticks of a log axis)? */
export function isDecade(value: number): boolean {
  const exponent = Math.log10(Math.abs(value));
  return Math.abs(exponent - Math.round(exponent)) < 1e-9;
}

/** Distinct line colours, from the theme where it has them. */
export function palette(): string[] {
  return [
    cssVar('--jp-brand-color1', '#1976d2'),
    cssVar('--jp-warn-color1', '#f57c00'),
    cssVar('--jp-success-color1', '#388e3c'),
    cssVar('--jp-error-color1', '#d32f2f'),
    '#8e24aa',
    '#00838f',
    '#6d4c41',
    '#c2185b'
  ];
}

/**
 * Align several series on the union of their steps (uPlot wants one x array);
 * a series without a point at a step has null there.
 */
export function alignSeries(
  series: ISeries[]
): [number[], ...(number | null)[][]] {
  const steps = new Set<number>();
  series.forEach(s => s.step.forEach(x => steps.add(x)));
  const xs = [...steps].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map(s => {
    const y: (number | null)[] = new Array(xs.length).fill(null);
    s.step.forEach((x, i) => {
      y[index.get(x)!] = s.value[i];
    });
    return y;
  });
  return [xs, ...ys];
}

export interface IChartLine {
  label: string;
  series: ISeries;
}

/**
 * A chart of one metric: a titled box holding an uPlot canvas with a line per entry.
 * `update` replaces the data in place (no new chart per poll).
 */
export class MetricChart {
  readonly node: HTMLElement;

  constructor(
    readonly title: string,
    lines: IChartLine[],
    options: { width?: number; height?: number; xLabel?: string } = {}
  ) {
    this.node = h(
      'figure',
      {
        class: 'mlops-chart',
        'data-metric': title,
        'aria-label': `chart of ${title}`
      },
      h('figcaption', { class: 'mlops-chart-title' }, title)
    );
    const fg = cssVar('--jp-ui-font-color1', '#222');
    const grid = cssVar('--jp-border-color2', '#ddd');
    const colours = palette();
    const axis = {
      stroke: fg,
      grid: { stroke: grid, width: 1 },
      ticks: { stroke: grid }
    };
    this._plot = new uPlot(
      {
        width: options.width ?? 420,
        height: options.height ?? 220,
        legend: { show: lines.length > 1 },
        scales: { x: { time: false } },
        axes: [{ ...axis, label: options.xLabel ?? 'step' }, { ...axis }],
        series: [
          { label: options.xLabel ?? 'step' },
          ...lines.map((line, i) => ({
            label: line.label,
            stroke: colours[i % colours.length],
            width: 2,
            spanGaps: true,
            points: { show: line.series.step.length < 2 }
          }))
        ]
      },
      alignSeries(lines.map(l => l.series)) as uPlot.AlignedData,
      this.node
    );
  }

  update(lines: IChartLine[]): void {
    this._plot.setData(
      alignSeries(lines.map(l => l.series)) as uPlot.AlignedData
    );
  }

  setWidth(width: number): void {
    this._plot.setSize({ width, height: this._plot.height });
  }

  dispose(): void {
    this._plot.destroy();
  }

  private _plot: uPlot;
}

/**
 * A scatter of a metric against one parameter (sweep view): points only, x sorted
 * (uPlot's requirement), categorical values placed at their index.
 */
export class ScatterChart {
  readonly node: HTMLElement;

  constructor(
    param: string,
    metric: string,
    xs: unknown[],
    ys: (number | null)[]
  ) {
    this.node = h(
      'figure',
      {
        class: 'mlops-chart',
        'data-param': param,
        'aria-label': `${metric} against ${param}`
      },
      h('figcaption', { class: 'mlops-chart-title' }, `${metric} vs ${param}`)
    );
    const numeric = xs.every(x => typeof x === 'number');
    const categories = numeric
      ? []
      : [...new Set(xs.map(x => String(x)))].sort();
    const pairs = xs
      .map(
        (x, i) =>
          [numeric ? (x as number) : categories.indexOf(String(x)), ys[i]] as [
            number,
            number | null
          ]
      )
      .filter(p => p[1] !== null)
      .sort((a, b) => a[0] - b[0]);
    const positive = numeric && pairs.length > 1 && pairs.every(p => p[0] > 0);
    const spread = positive ? pairs[pairs.length - 1][0] / pairs[0][0] : 0;
    // Values over more than ~2 decades (a loguniform parameter) get a log axis.
    const logX = spread > 50;
    const fg = cssVar('--jp-ui-font-color1', '#222');
    const grid = cssVar('--jp-border-color2', '#ddd');
    const axis = {
      stroke: fg,
      grid: { stroke: grid, width: 1 },
      ticks: { stroke: grid }
    };
    this._plot = new uPlot(
      {
        width: 320,
        height: 200,
        legend: { show: false },
        scales: { x: { time: false, distr: logX ? 3 : 1, log: 10 } },
        axes: [
          {
            ...axis,
            label: param,
            values: numeric
              ? (_u: uPlot, splits: number[]) =>
                  splits.map(v => (!logX || isDecade(v) ? formatTick(v) : ''))
              : (_u: uPlot, splits: number[]) =>
                  splits.map(v =>
                    Number.isInteger(v) ? (categories[v] ?? '') : ''
                  )
          },
          { ...axis, label: metric }
        ],
        series: [
          { label: param },
          {
            label: metric,
            stroke: palette()[0],
            paths: () => null,
            points: { show: true, size: 8, fill: palette()[0] }
          }
        ]
      },
      [pairs.map(p => p[0]), pairs.map(p => p[1])] as uPlot.AlignedData,
      this.node
    );
  }

  dispose(): void {
    this._plot.destroy();
  }

  private _plot: uPlot;
}
