import { EventFeed, backoffDelay } from '../feed';
import { IFeed } from '../tokens';

function answer(cursor: string, extra: Partial<IFeed> = {}): IFeed {
  return { cursor, events: [], metrics: [], lost: [], more: false, ...extra };
}

describe('backoffDelay', () => {
  it('doubles from 2 s and stops at a minute', () => {
    expect([0, 1, 2, 3, 10].map(n => backoffDelay(n))).toEqual([
      2000, 4000, 8000, 16000, 60000
    ]);
  });
});

describe('EventFeed', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('follows the cursor and reports only answers with changes', async () => {
    const asked: (string | null)[] = [];
    const changes: IFeed[] = [];
    const answers = [
      answer('1-0'),
      answer('2-0', {
        events: [
          { id: 2, kind: 'run.status', subject: 'r1', status: 'completed' }
        ]
      })
    ];
    const feed = new EventFeed({
      fetch: async since => {
        asked.push(since);
        return answers.shift() ?? answer('2-0');
      },
      onChange: f => changes.push(f)
    });
    feed.start('0-0');
    await feed.tick();
    await feed.tick();
    await feed.tick();
    expect(asked).toEqual(['0-0', '1-0', '2-0']);
    expect(changes.map(c => c.cursor)).toEqual(['2-0']);
    feed.dispose();
  });

  it('does not poll while paused', async () => {
    const fetch = jest.fn(async () => answer('1-0'));
    const feed = new EventFeed({ fetch, onChange: () => undefined });
    feed.start('0-0');
    feed.pause();
    await jest.advanceTimersByTimeAsync(60000);
    await feed.tick();
    expect(fetch).not.toHaveBeenCalled();
    feed.resume();
    await jest.advanceTimersByTimeAsync(0);
    expect(fetch).toHaveBeenCalledTimes(1);
    feed.dispose();
  });

  it('backs off while the server is unreachable, and says when it is back', async () => {
    let up = false;
    const errors: [string | null, number][] = [];
    const fetch = jest.fn(async () => {
      if (!up) {
        throw new Error('unreachable');
      }
      return answer('5-0');
    });
    const feed = new EventFeed({
      fetch,
      onChange: () => undefined,
      onError: (e, retry) => errors.push([e ? e.message : null, retry]),
      interval: 1000
    });
    feed.start('0-0');
    await feed.tick();
    await feed.tick();
    expect(errors).toEqual([
      ['unreachable', 4000],
      ['unreachable', 8000]
    ]);
    // Nothing is asked again before the back-off delay has passed.
    await jest.advanceTimersByTimeAsync(7000);
    expect(fetch).toHaveBeenCalledTimes(2);
    up = true;
    await jest.advanceTimersByTimeAsync(1500);
    expect(fetch).toHaveBeenCalledTimes(3);
    expect(errors[errors.length - 1]).toEqual([null, 0]);
    expect(feed.failures).toBe(0);
    expect(feed.cursor).toBe('5-0');
    feed.dispose();
  });

  it('asks again at once while the server says there is more', async () => {
    const answers = [answer('1-0', { more: true }), answer('2-0')];
    const fetch = jest.fn(async () => answers.shift() ?? answer('2-0'));
    const feed = new EventFeed({
      fetch,
      onChange: () => undefined,
      interval: 5000
    });
    feed.start('0-0');
    await jest.advanceTimersByTimeAsync(10);
    expect(fetch).toHaveBeenCalledTimes(2);
    feed.dispose();
  });
});
