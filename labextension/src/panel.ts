/**
 * The "DS Jobs" sidebar: the jobs newest first (name, status badge, created, duration, where it
 * came from), a status and a text filter, and a message instead of the list when the server
 * extension is missing or the job server cannot be reached.
 *
 * The list is virtual: rows have one fixed height and only those in view (plus a few) are in the
 * DOM, so ten thousand jobs scroll like ten; the next page is fetched as the end comes near.
 * Keyboard: the list is one tab stop (a listbox); arrows, Page Up/Down, Home/End move, Enter opens.
 */

import { Widget } from '@lumino/widgets';

import { el, formatFullTime, formatTime, jobDuration, statusBadge, updateBadge } from './format';
import { JobsModel, STATUS_FILTERS } from './model';
import { originLabel, parseOrigin } from './origin';
import { isActive, Job } from './types';

export const ROW_HEIGHT = 48;
const OVERSCAN = 8;

export interface IPanelOptions {
  model: JobsModel;
  /** Open a job's details in the main area. */
  open(id: string): void;
  /** Each time the panel shows. */
  onShow?(): void;
  /** Run the current notebook as a job (the header button). */
  runNotebook?(): void;
}

export class JobsPanel extends Widget {
  constructor(private readonly options: IPanelOptions) {
    super();
    this.id = 'ds-jobs-panel';
    this.addClass('ds-jobs-panel');
    this.title.caption = 'DS Jobs';
    this.model = options.model;
    this._build();
    this.model.changed.connect(this._scheduleRender, this);
    this.model.jobChanged.connect(this._scheduleRender, this);
  }

  readonly model: JobsModel;

  /** The job the keyboard and the selection are on. */
  get selectedId(): string {
    return this._selected;
  }

  /** Select `id` and scroll it into view (a new job from "Run notebook as job"). */
  reveal(id: string): void {
    this._selected = id;
    const i = this.model.visible.findIndex(j => j.id === id);
    if (i >= 0) {
      this._scrollIntoView(i);
    }
    this._scheduleRender();
  }

  dispose(): void {
    if (this._timer) {
      window.clearInterval(this._timer);
    }
    super.dispose();
  }

  protected onAfterAttach(): void {
    this._timer = window.setInterval(() => {
      if (this.isVisible && this.model.visible.some(j => isActive(j.status))) {
        this._render(); // durations of running jobs tick
      }
    }, 1000);
    if (this.isVisible) {
      this.options.onShow?.();
    }
    this._scheduleRender();
  }

  protected onBeforeDetach(): void {
    if (this._timer) {
      window.clearInterval(this._timer);
      this._timer = 0;
    }
  }

  protected onAfterShow(): void {
    this.options.onShow?.();
    this._scheduleRender();
  }

  protected onResize(): void {
    this._scheduleRender();
  }

  private _build(): void {
    const header = el('div', 'ds-jobs-header');
    const title = el('h2', 'ds-jobs-title', 'DS Jobs');
    const tools = el('div', 'ds-jobs-tools');
    if (this.options.runNotebook) {
      const run = el('button', 'ds-jobs-button ds-jobs-run-nb', 'Run notebook');
      run.title = 'Run the current notebook as a job';
      run.onclick = () => this.options.runNotebook?.();
      tools.appendChild(run);
    }
    const refresh = el('button', 'ds-jobs-button ds-jobs-refresh', 'Refresh');
    refresh.title = 'Reload the list (it updates live; this reconnects)';
    refresh.onclick = () => void this.model.start();
    tools.appendChild(refresh);
    header.append(title, tools);

    const filters = el('div', 'ds-jobs-filters');
    const select = el('select', 'ds-jobs-status-filter');
    select.setAttribute('aria-label', 'Filter by status');
    for (const f of STATUS_FILTERS) {
      const option = el('option', '', f.label);
      option.value = f.value;
      select.appendChild(option);
    }
    select.onchange = () => this.model.setStatusFilter(select.value);
    const search = el('input', 'ds-jobs-text-filter');
    search.type = 'search';
    search.placeholder = 'Filter by name, id, notebook';
    search.setAttribute('aria-label', 'Filter by name, id or notebook');
    search.oninput = () => this.model.setTextFilter(search.value);
    search.onkeydown = e => {
      if (e.key === 'ArrowDown') {
        e.preventDefault();
        this._list.focus();
      }
    };
    filters.append(select, search);

    this._notice = el('div', 'ds-jobs-notice');
    this._notice.setAttribute('role', 'status');
    this._retry = el('button', 'ds-jobs-button ds-jobs-retry', 'Retry');
    this._retry.onclick = () => void this.model.start();

    this._list = el('div', 'ds-jobs-list');
    this._list.tabIndex = 0;
    this._list.setAttribute('role', 'listbox');
    this._list.setAttribute('aria-label', 'Jobs, newest first');
    this._spacer = el('div', 'ds-jobs-spacer');
    this._list.appendChild(this._spacer);
    this._list.addEventListener('scroll', () => this._scheduleRender(), { passive: true });
    this._list.addEventListener('keydown', e => this._onKey(e));
    this._list.addEventListener('click', e => this._onClick(e));
    this._list.addEventListener('focus', () => {
      if (!this._selected && this.model.visible.length > 0) {
        this._selected = this.model.visible[0].id;
      }
      this._scheduleRender();
    });

    this._footer = el('div', 'ds-jobs-footer');
    this._footer.setAttribute('aria-live', 'polite');
    this.node.append(header, filters, this._notice, this._list, this._footer);
  }

  private _scheduleRender(): void {
    if (this._frame) {
      return;
    }
    this._frame = window.requestAnimationFrame(() => {
      this._frame = 0;
      this._render();
    });
  }

  private _render(): void {
    const model = this.model;
    const state = model.state;
    this.node.dataset.state = state;
    const blocked = state === 'missing' || state === 'unreachable';
    this._notice.textContent = '';
    if (blocked) {
      const heading = state === 'missing' ? 'The DS Jobs server extension is missing' : 'No job server';
      this._notice.append(el('strong', '', heading), el('p', '', model.message), this._retry);
      this._notice.dataset.kind = state;
    } else if (model.message) {
      this._notice.append(el('p', '', model.message));
      this._notice.dataset.kind = 'error';
    } else {
      delete this._notice.dataset.kind;
    }
    this._list.hidden = blocked;
    const jobs = blocked ? [] : model.visible;
    this._spacer.style.height = `${jobs.length * ROW_HEIGHT}px`;

    const height = this._list.clientHeight || 600;
    const first = Math.max(0, Math.floor(this._list.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(jobs.length, Math.ceil((this._list.scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
    const keep = new Set<string>();
    const now = Date.now();
    for (let i = first; i < last; i++) {
      const job = jobs[i];
      keep.add(job.id);
      let row = this._rows.get(job.id);
      if (!row) {
        row = this._makeRow(job.id);
        this._rows.set(job.id, row);
        this._list.appendChild(row);
      }
      this._fillRow(row, job, i, jobs.length, now);
    }
    for (const [id, row] of this._rows) {
      if (!keep.has(id)) {
        row.remove();
        this._rows.delete(id);
      }
    }
    const selectedIndex = jobs.findIndex(j => j.id === this._selected);
    if (selectedIndex >= 0 && keep.has(this._selected)) {
      this._list.setAttribute('aria-activedescendant', rowId(this._selected));
    } else {
      this._list.removeAttribute('aria-activedescendant');
    }

    let footer = '';
    if (state === 'connecting') {
      footer = 'Connecting…';
    } else if (!blocked) {
      const count = jobs.length === 1 ? '1 job' : `${jobs.length} jobs`;
      const filtered = jobs.length !== model.loadedCount ? ` of ${model.loadedCount} loaded` : '';
      footer = count + filtered + (model.hasMore ? ', more below' : '');
      if (jobs.length === 0 && !model.hasMore) {
        footer = model.loadedCount === 0 && !model.textFilter ? 'No jobs yet' : 'No job matches the filters';
      }
    }
    this._footer.textContent = footer;
    // near the end, or the filters leave too few rows to fill the view: fetch the next page
    if (!blocked && model.hasMore && !model.loading && last >= jobs.length - OVERSCAN) {
      void model.loadMore();
    }
  }

  private _makeRow(id: string): HTMLDivElement {
    const row = el('div', 'ds-jobs-row');
    row.id = rowId(id);
    row.dataset.jobId = id;
    row.setAttribute('role', 'option');
    const top = el('div', 'ds-jobs-row-top');
    top.append(el('span', 'ds-jobs-name'), statusBadge(undefined));
    const meta = el('div', 'ds-jobs-row-meta');
    meta.append(el('span', 'ds-jobs-created'), el('span', 'ds-jobs-duration'), el('span', 'ds-jobs-origin'));
    row.append(top, meta);
    return row;
  }

  private _fillRow(row: HTMLDivElement, job: Job, index: number, count: number, now: number): void {
    row.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
    row.setAttribute('aria-posinset', String(index + 1));
    row.setAttribute('aria-setsize', String(count));
    const selected = job.id === this._selected;
    row.classList.toggle('ds-mod-selected', selected);
    row.setAttribute('aria-selected', String(selected));
    const [name, badge] = Array.from(row.firstElementChild!.children) as HTMLElement[];
    const label = job.name || job.id;
    if (name.textContent !== label) {
      name.textContent = label;
      name.title = `${label}\n${job.id}`;
    }
    updateBadge(badge, job.status);
    const [created, duration, origin] = Array.from(row.lastElementChild!.children) as HTMLElement[];
    created.textContent = formatTime(job.created_at, now);
    created.title = `created ${formatFullTime(job.created_at)}`;
    const progress = isActive(job.status) && job.progress?.message ? ` · ${job.progress.message}` : '';
    duration.textContent = jobDuration(job, now) + progress;
    const o = parseOrigin(job.desc);
    const text = originLabel(o);
    if (origin.textContent !== text) {
      origin.textContent = text;
      origin.title = o ? `from ${o.notebook || 'a notebook'}${o.count !== null ? `, cell [${o.count}]` : ''}` : '';
    }
  }

  private _onClick(e: MouseEvent): void {
    const row = (e.target as HTMLElement).closest<HTMLElement>('.ds-jobs-row');
    const id = row?.dataset.jobId;
    if (id) {
      this._selected = id;
      this._scheduleRender();
      this.options.open(id);
    }
  }

  private _onKey(e: KeyboardEvent): void {
    const jobs = this.model.visible;
    if (jobs.length === 0) {
      return;
    }
    let i = jobs.findIndex(j => j.id === this._selected);
    const page = Math.max(1, Math.floor(this._list.clientHeight / ROW_HEIGHT) - 1);
    switch (e.key) {
      case 'ArrowDown':
        i = Math.min(jobs.length - 1, i + 1);
        break;
      case 'ArrowUp':
        i = Math.max(0, i - 1);
        break;
      case 'PageDown':
        i = Math.min(jobs.length - 1, i + page);
        break;
      case 'PageUp':
        i = Math.max(0, i - page);
        break;
      case 'Home':
        i = 0;
        break;
      case 'End':
        i = jobs.length - 1;
        break;
      case 'Enter':
      case ' ':
        if (i >= 0) {
          e.preventDefault();
          this.options.open(jobs[i].id);
        }
        return;
      default:
        return;
    }
    e.preventDefault();
    this._selected = jobs[Math.max(0, i)].id;
    this._scrollIntoView(Math.max(0, i));
    this._render();
  }

  private _scrollIntoView(i: number): void {
    const top = i * ROW_HEIGHT;
    const height = this._list.clientHeight;
    if (top < this._list.scrollTop) {
      this._list.scrollTop = top;
    } else if (top + ROW_HEIGHT > this._list.scrollTop + height) {
      this._list.scrollTop = top + ROW_HEIGHT - height;
    }
  }

  private _notice!: HTMLDivElement;
  private _retry!: HTMLButtonElement;
  private _list!: HTMLDivElement;
  private _spacer!: HTMLDivElement;
  private _footer!: HTMLDivElement;
  private _rows = new Map<string, HTMLDivElement>();
  private _selected = '';
  private _frame = 0;
  private _timer = 0;
}

function rowId(id: string): string {
  return `ds-job-row-${id.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}
