import { h } from '../dom';
import { statusIcon } from '../panel';

describe('h', () => {
  it('renders user text as text, never as HTML', () => {
    const name = '<img src=x onerror=alert(1)>';
    const el = h('span', { title: name }, name);
    expect(el.textContent).toBe(name);
    expect(el.querySelector('img')).toBeNull();
    expect(el.getAttribute('title')).toBe(name);
  });

  it('skips empty children and false attributes', () => {
    const el = h(
      'button',
      { disabled: false, hidden: true },
      null,
      'a',
      false,
      'b'
    );
    expect(el.hasAttribute('disabled')).toBe(false);
    expect(el.hasAttribute('hidden')).toBe(true);
    expect(el.textContent).toBe('ab');
  });
});

describe('statusIcon', () => {
  it('names the status for assistive technology', () => {
    const icon = statusIcon('running');
    expect(icon.getAttribute('aria-label')).toBe('running');
    expect(icon.getAttribute('role')).toBe('img');
    expect(icon.className).toContain('mlops-status-running');
  });
});
