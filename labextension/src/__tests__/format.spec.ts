import {
  formatDuration,
  formatValue,
  keyMetric,
  matchesText,
  pythonString,
  runDuration,
  sideBySide
} from '../format';
import { alignSeries, formatTick, isDecade } from '../charts';
import { IRun } from '../tokens';

function run(extra: Partial<IRun> = {}): IRun {
  return {
    id: 'abc123',
    name: 'try',
    experiment: 'digits',
    status: 'completed',
    params: {},
    tags: {},
    metrics: {},
    created_at: 100,
    started_at: 100,
    ended_at: 165,
    ...extra
  };
}

describe('formatDuration', () => {
  it('reads at every scale', () => {
    expect(formatDuration(1.234)).toBe('1.2 s');
    expect(formatDuration(42.4)).toBe('42 s');
    expect(formatDuration(65)).toBe('1 m 05 s');
    expect(formatDuration(2 * 3600 + 7 * 60 + 5)).toBe('2 h 07 m');
    expect(formatDuration(null)).toBe('—');
    expect(formatDuration(NaN)).toBe('—');
  });
});

describe('runDuration', () => {
  it('measures an ended run from start to end', () => {
    expect(runDuration(run(), 1000)).toBe(65);
  });
  it('measures an active run up to now', () => {
    expect(runDuration(run({ status: 'running', ended_at: null }), 130)).toBe(
      30
    );
  });
  it('has nothing for a run that never started or ended without a time', () => {
    expect(runDuration(run({ started_at: null }), 130)).toBeNull();
    expect(
      runDuration(run({ status: 'lost', ended_at: null }), 130)
    ).toBeNull();
  });
});

describe('formatValue', () => {
  it('keeps four significant digits and exponents for extremes', () => {
    expect(formatValue(0.123456)).toBe('0.1235');
    expect(formatValue(3)).toBe('3');
    expect(formatValue(1e-5)).toBe('1.000e-5');
    expect(formatValue(null)).toBe('—');
    expect(formatValue('adam')).toBe('adam');
    expect(formatValue([1, 2])).toBe('[1,2]');
  });
});

describe('keyMetric', () => {
  it('prefers the named metric, else the first by name', () => {
    const r = run({ metrics: { loss: 0.2, accuracy: 0.9 } });
    expect(keyMetric(r, 'loss')).toEqual(['loss', 0.2]);
    expect(keyMetric(r)).toEqual(['accuracy', 0.9]);
    expect(keyMetric(run())).toBeNull();
  });
});

describe('sideBySide', () => {
  it('lists the union of keys and marks the ones that differ', () => {
    const rows = sideBySide([
      { lr: 0.1, epochs: 5 },
      { lr: 0.01, epochs: 5, dropout: 0.2 }
    ]);
    expect(rows.map(r => [r.key, r.differs])).toEqual([
      ['dropout', true],
      ['epochs', false],
      ['lr', true]
    ]);
    expect(rows[0].values).toEqual(['—', '0.2']);
  });
});

describe('matchesText', () => {
  it('finds a run by name, id, experiment or tag', () => {
    const r = run({ tags: { team: 'vision' } });
    expect(matchesText(r, 'TRY')).toBe(true);
    expect(matchesText(r, 'abc')).toBe(true);
    expect(matchesText(r, 'team:vision')).toBe(true);
    expect(matchesText(r, 'audio')).toBe(false);
    expect(matchesText(r, '  ')).toBe(true);
  });
});

describe('pythonString', () => {
  it('quotes any text as a valid Python literal', () => {
    expect(pythonString('a"b\\c')).toBe('"a\\"b\\\\c"');
  });
});

describe('chart ticks', () => {
  it('labels log-axis decades without rounding them to 0', () => {
    expect(formatTick(0.0001)).toBe('1e-4');
    expect(formatTick(0.01)).toBe('0.01');
    expect(formatTick(0)).toBe('0');
    expect([0.001, 0.002, 0.01, 10].map(isDecade)).toEqual([
      true,
      false,
      true,
      true
    ]);
  });

  it('aligns series on the union of their steps', () => {
    expect(
      alignSeries([
        { step: [0, 2], value: [1, 3] },
        { step: [1, 2], value: [5, 6] }
      ])
    ).toEqual([
      [0, 1, 2],
      [1, null, 3],
      [null, 5, 6]
    ]);
  });
});
