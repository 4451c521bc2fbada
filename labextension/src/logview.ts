/**
 * A job's log, streamed live from `GET /ds-jobs/jobs/{id}/logs` (server-sent events; a reconnect
 * resumes at the last event's offset), windowed: every line is kept (text and stream, in flat
 * arrays) but only the lines in view are in the DOM, in a fixed pool of line nodes, so a
 * 1,000,000-line log scrolls as freely as a short one. Lines of stderr are marked (class, a gutter
 * mark and the `data-stream` attribute), lines the job server added are `system`.
 *
 * The view follows the tail while it is scrolled to the bottom; scrolling up stops following,
 * scrolling back down (or the Follow button) resumes. Appends are batched: one render per frame.
 * Taller than MAX_PX (browsers cap an element's height), the scrollbar maps proportionally.
 */

import { Widget } from '@lumino/widgets';

import { DsJobsAPI, StreamHandle } from './api';
import { el } from './format';
import { LogEvent } from './types';

const STREAMS = ['stdout', 'stderr', 'system'] as const;
const STREAM_CODE: Record<string, number> = { stdout: 0, stderr: 1, system: 2 };
const MAX_PX = 8_000_000;
const OVERSCAN = 20;

export class LogView extends Widget {
  constructor(
    private readonly api: DsJobsAPI,
    readonly jobId: string,
    private readonly fileName: string
  ) {
    super();
    this.addClass('ds-log-view');
    const bar = el('div', 'ds-log-bar');
    this._status = el('span', 'ds-log-status', 'connecting…');
    this._status.setAttribute('aria-live', 'polite');
    this._follow = el('button', 'ds-jobs-button ds-log-follow', 'Follow');
    this._follow.title = 'Keep the newest line in view';
    this._follow.onclick = () => this.setFollow(!this._following);
    const download = el('button', 'ds-jobs-button ds-log-download', 'Download full log');
    download.title = 'Save the whole log as text';
    download.onclick = () => this.download();
    bar.append(el('strong', '', 'Log'), this._status, this._follow, download);

    this._scroller = el('div', 'ds-log-scroller');
    this._scroller.tabIndex = 0;
    this._scroller.setAttribute('role', 'log');
    this._scroller.setAttribute('aria-label', 'Job log');
    this._spacer = el('div', 'ds-log-spacer');
    this._window = el('div', 'ds-log-window');
    this._scroller.append(this._spacer, this._window);
    this._scroller.addEventListener('scroll', () => this._onScroll(), { passive: true });
    this._scroller.addEventListener('keydown', e => this._onKey(e));
    this.node.append(bar, this._scroller);
    this.setFollow(true);
  }

  /** How many lines the log has. */
  get lineCount(): number {
    return this._text.length;
  }

  /** Whether the log is complete (`event: end`). */
  get ended(): boolean {
    return this._ended;
  }

  /** Start (or restart) streaming from the start of the log. */
  start(): void {
    this._stream?.close();
    this._stream = null;
    this._text = [];
    this._kind = [];
    this._open = [-1, -1, -1];
    this._ended = false;
    this._stopped = false;
    this._offset = '';
    if (this.isVisible || !this.isAttached) {
      this._connect();
    }
  }

  /**
   * Stream from `_offset` (the id of the last event: exactly where the last stream stopped).
   * Only a visible log streams: a browser keeps few connections per server (6 for HTTP/1.1), and
   * JupyterLab's own requests need them; a hidden log resumes when it shows again.
   */
  private _connect(): void {
    if (this._stream || this._ended || this._stopped) {
      return;
    }
    this._stream = this.api.stream(`jobs/${encodeURIComponent(this.jobId)}/logs`, {
      query: last => ({ offset: last || this._offset || '0' }),
      endEvent: 'end',
      onOpen: () => this._setStatus(''),
      onError: (error, retry) => this._setStatus(retry ? `reconnecting: ${error.message}` : error.message),
      onMessage: m => {
        if (m.id) {
          this._offset = m.id;
        }
        if (m.event === 'end') {
          this._ended = true;
          this._setStatus('');
        } else if (m.event === 'error') {
          let why = m.data;
          try {
            why = String((JSON.parse(m.data) as { message?: string }).message ?? m.data);
          } catch {
            // as it came
          }
          this._stopped = true;
          this._stream?.close();
          this._setStatus(`the log stopped: ${why}`);
        } else if (m.event === 'message' && m.data) {
          try {
            this.append(JSON.parse(m.data) as LogEvent);
          } catch {
            // not JSON: a comment or an event of a newer server
          }
        }
      }
    });
  }

  private _pause(): void {
    this._stream?.close();
    this._stream = null;
  }

  /** Add one piece of the log (several lines, or the rest of a line). */
  append(event: LogEvent): void {
    const code = STREAM_CODE[event.stream] ?? 0;
    const parts = event.text.split('\n');
    let i = 0;
    const open = this._open[code];
    if (open >= 0 && open === this._text.length - 1) {
      this._text[open] = overwrite(this._text[open], parts[0]); // the rest of an unfinished line
      i = 1;
    }
    for (; i < parts.length; i++) {
      this._text.push(overwrite('', parts[i]));
      this._kind.push(code);
    }
    // text ending with '\n' leaves an empty last part: no line is open, drop the placeholder
    if (parts[parts.length - 1] === '' && (parts.length > 1 || open < 0)) {
      this._text.pop();
      this._kind.pop();
      this._open[code] = -1;
    } else {
      this._open[code] = this._text.length - 1;
    }
    for (let s = 0; s < 3; s++) {
      if (s !== code) {
        this._open[s] = -1; // another stream wrote: its unfinished line stays as it is
      }
    }
    this._scheduleRender();
  }

  setFollow(on: boolean): void {
    this._following = on;
    this._follow.setAttribute('aria-pressed', String(on));
    this._follow.classList.toggle('ds-mod-active', on);
    if (on) {
      this._scheduleRender();
    }
  }

  /** The whole log as text (what "Download full log" saves). */
  text(): string {
    return this._text.length ? this._text.join('\n') + '\n' : '';
  }

  download(): void {
    const blob = new Blob([this.text()], { type: 'text/plain' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = this.fileName;
    document.body.appendChild(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }

  dispose(): void {
    this._stream?.close();
    this._stream = null;
    if (this._frame) {
      window.cancelAnimationFrame(this._frame);
    }
    super.dispose();
  }

  protected onAfterShow(): void {
    this._connect();
    this._scheduleRender();
  }

  protected onAfterHide(): void {
    this._pause();
  }

  protected onResize(): void {
    this._scheduleRender();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      this._connect();
    }
    this._scheduleRender();
  }

  protected onBeforeDetach(): void {
    this._pause();
  }

  private _setStatus(text: string): void {
    const lines = this._text.length;
    const count = `${lines.toLocaleString('en')} line${lines === 1 ? '' : 's'}`;
    this._status.textContent = [count, this._ended ? 'complete' : 'live', text].filter(Boolean).join(' · ');
    this._statusNote = text;
  }

  private _scheduleRender(): void {
    if (!this._frame) {
      this._frame = window.requestAnimationFrame(() => {
        this._frame = 0;
        this._render();
      });
    }
  }

  /** The line height in pixels, measured once the view is in the DOM. */
  private _lineHeight(): number {
    if (this._lh === 0 && this.isAttached) {
      const probe = el('div', 'ds-log-line', 'M');
      this._window.appendChild(probe);
      this._lh = probe.getBoundingClientRect().height || 0;
      probe.remove();
    }
    return this._lh || 17;
  }

  private _render(): void {
    this._setStatus(this._statusNote);
    if (!this.isVisible) {
      return;
    }
    const lh = this._lineHeight();
    const n = this._text.length;
    const viewH = this._scroller.clientHeight;
    const full = n * lh;
    const total = Math.min(full, MAX_PX);
    this._spacer.style.height = `${total}px`;
    if (this._following) {
      this._scroller.scrollTop = total; // clamped to the bottom
      this._autoTop = this._scroller.scrollTop;
    }
    const scrollTop = this._scroller.scrollTop;
    const visibleLines = Math.ceil(viewH / lh) + 1;
    let firstExact: number;
    if (full <= MAX_PX) {
      firstExact = scrollTop / lh;
    } else {
      const maxScroll = Math.max(1, total - viewH);
      firstExact = (Math.min(scrollTop, maxScroll) / maxScroll) * Math.max(0, n - visibleLines + 1);
    }
    const first = Math.max(0, Math.floor(firstExact) - (full <= MAX_PX ? OVERSCAN : 0));
    const last = Math.min(n, Math.floor(firstExact) + visibleLines + OVERSCAN);
    const top = full <= MAX_PX ? first * lh : scrollTop - (firstExact - Math.floor(firstExact)) * lh;
    this._window.style.transform = `translateY(${top}px)`;
    const count = Math.max(0, last - first);
    while (this._pool.length < count) {
      const line = el('div', 'ds-log-line');
      this._pool.push(line);
      this._window.appendChild(line);
    }
    for (let i = 0; i < this._pool.length; i++) {
      const line = this._pool[i];
      if (i >= count) {
        line.hidden = true;
        continue;
      }
      line.hidden = false;
      const index = first + i;
      const text = this._text[index];
      if (line.textContent !== text) {
        line.textContent = text;
      }
      const stream = STREAMS[this._kind[index]];
      if (line.dataset.stream !== stream) {
        line.dataset.stream = stream;
        line.title = stream === 'stdout' ? '' : stream;
      }
    }
  }

  private _onScroll(): void {
    const s = this._scroller;
    // a scroll to where following put it is not the user's
    if (!this._following || Math.abs(s.scrollTop - this._autoTop) >= 1) {
      const atBottom = s.scrollTop + s.clientHeight >= s.scrollHeight - this._lineHeight();
      if (atBottom !== this._following) {
        this.setFollow(atBottom);
      }
    }
    this._scheduleRender();
  }

  private _onKey(e: KeyboardEvent): void {
    const s = this._scroller;
    if (e.key === 'End') {
      this.setFollow(true);
    } else if (e.key === 'Home') {
      this.setFollow(false);
      s.scrollTop = 0;
    } else {
      return;
    }
    e.preventDefault();
    this._scheduleRender();
  }

  private _scroller: HTMLDivElement;
  private _spacer: HTMLDivElement;
  private _window: HTMLDivElement;
  private _status: HTMLSpanElement;
  private _follow: HTMLButtonElement;
  private _statusNote = '';
  private _stream: StreamHandle | null = null;
  private _text: string[] = [];
  private _kind: number[] = [];
  /** Per stream, the index of its line still being written (no '\n' yet), or -1. */
  private _open = [-1, -1, -1];
  private _ended = false;
  private _stopped = false;
  private _offset = '';
  private _following = true;
  private _autoTop = -1;
  private _pool: HTMLDivElement[] = [];
  private _frame = 0;
  private _lh = 0;
}

/** `line` after `text` is written at its end: a carriage return goes back to the line's start
 * (progress bars), one just before the newline (CRLF) is dropped. */
function overwrite(line: string, text: string): string {
  let s = line + text;
  if (s.endsWith('\r')) {
    s = s.slice(0, -1);
  }
  const cr = s.lastIndexOf('\r');
  return cr < 0 ? s : s.slice(cr + 1);
}
