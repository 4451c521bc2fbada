/**
 * The jobs the panel knows, kept live: pages of `GET /ds-jobs/jobs` (newest first) loaded as the
 * list scrolls, and `GET /ds-jobs/events` followed so a job created, changed or deleted anywhere
 * (a notebook, the CLI, another tab) shows without a reload. The browser never polls the list.
 *
 * Invariants: `jobs` is sorted newest first by `created_at` and holds each id once; `byId` indexes
 * it. The status filter is applied by the server when a page is fetched and again here (a job
 * whose status changes leaves or enters the view); the text filter is applied here alone.
 */

import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, DsJobsAPI, StreamHandle } from './api';
import { parseOrigin } from './origin';
import { parseTime } from './format';
import { isActive, Job, JobStatus } from './types';

export type ConnectionState = 'connecting' | 'ready' | 'missing' | 'unreachable';

const PAGE_SIZE = 200;
const FIRST_PAGE_SIZE = 50;

/** The status filter choices of the panel. */
export const STATUS_FILTERS: { label: string; value: string; statuses: JobStatus[] }[] = [
  { label: 'All statuses', value: 'all', statuses: [] },
  {
    label: 'Active',
    value: 'active',
    statuses: ['CREATING', 'PREPARING', 'EXECUTING', 'UPLOADING_OUTPUT', 'CANCELLING']
  },
  { label: 'Succeeded', value: 'success', statuses: ['SUCCESS'] },
  { label: 'Failed', value: 'error', statuses: ['ERROR'] },
  { label: 'Cancelled', value: 'cancelled', statuses: ['CANCELLED', 'CANCELLING'] }
];

function createdKey(job: Job): number {
  return parseTime(job.created_at) ?? Number.MAX_SAFE_INTEGER; // unknown: a brand new job
}

export class JobsModel {
  constructor(readonly api: DsJobsAPI) {}

  get state(): ConnectionState {
    return this._state;
  }

  /** Why the state is `missing` or `unreachable` (or the last failed action). */
  get message(): string {
    return this._message;
  }

  /** The jobs passing the filters, newest first. */
  get visible(): readonly Job[] {
    if (this._visible === null) {
      this._visible = this._jobs.filter(j => this._matches(j));
    }
    return this._visible;
  }

  /** How many jobs are loaded (all filters but the text one applied by the server). */
  get loadedCount(): number {
    return this._jobs.length;
  }

  get hasMore(): boolean {
    return this._nextToken !== '';
  }

  get loading(): boolean {
    return this._loading !== null;
  }

  get statusFilter(): string {
    return this._statusFilter;
  }

  get textFilter(): string {
    return this._text;
  }

  /** The list (or the state) changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** One job changed (from an event, an action or a fetch). */
  get jobChanged(): ISignal<this, Job> {
    return this._jobChanged;
  }

  /** A job was deleted. */
  get jobDeleted(): ISignal<this, string> {
    return this._jobDeleted;
  }

  get(id: string): Job | undefined {
    return this._byId.get(id);
  }

  /** Connect: check the extension and load the first page (both at once), follow the events. */
  async start(): Promise<void> {
    this._events?.close();
    this._events = null;
    this._setState('connecting', '');
    const first = this.reload(FIRST_PAGE_SIZE); // a small first page: the first rows sooner
    try {
      const status = await this.api.status();
      if (status && status.reachable === false) {
        this._generation++; // the list's answer, whatever it is, is not the news
        this._setState('unreachable', status.message || 'The job server cannot be reached.');
      }
    } catch (error) {
      this._fail(error);
      if (this._state === 'missing' || this._state === 'unreachable') {
        this._generation++;
      }
      if (this._state === 'missing') {
        return;
      }
    }
    this._followEvents(); // it also says when the job server is back (`event: server`)
    await first;
  }

  /** Reload the first page (after a filter change, a reconnect, or Refresh). */
  async reload(pageSize = PAGE_SIZE): Promise<void> {
    const generation = ++this._generation;
    this._nextToken = '';
    try {
      const page = await this.api.listJobs({ status: this._serverStatuses(), pageSize });
      if (generation !== this._generation) {
        return;
      }
      this._jobs = [];
      this._byId.clear();
      this._addPage(page.jobs);
      this._nextToken = page.next_page_token ?? '';
      this._setState('ready', '');
    } catch (error) {
      if (generation === this._generation) {
        this._fail(error);
      }
    }
  }

  /** Load the next page, if there is one (at most one request at a time). */
  loadMore(): Promise<void> {
    if (!this._nextToken || this._state !== 'ready') {
      return Promise.resolve();
    }
    if (this._loading) {
      return this._loading;
    }
    const generation = this._generation;
    const token = this._nextToken;
    this._loading = (async () => {
      try {
        const page = await this.api.listJobs({
          status: this._serverStatuses(),
          pageSize: PAGE_SIZE,
          pageToken: token
        });
        if (generation === this._generation) {
          this._addPage(page.jobs);
          this._nextToken = page.next_page_token ?? '';
          this._emit();
        }
      } catch (error) {
        this._fail(error);
      } finally {
        this._loading = null;
      }
    })();
    return this._loading;
  }

  setStatusFilter(value: string): void {
    if (value !== this._statusFilter) {
      this._statusFilter = value;
      this._visible = null;
      this._emit();
      void this.reload();
    }
  }

  setTextFilter(text: string): void {
    const t = text.trim().toLowerCase();
    if (t !== this._text) {
      this._text = t;
      this._visible = null;
      this._emit();
    }
  }

  /** Fetch one job and put it in place (a new job: at its place among the newest). */
  async refreshJob(id: string): Promise<Job | null> {
    try {
      const job = await this.api.getJob(id);
      this.upsert(job);
      return job;
    } catch (error) {
      if (error instanceof ApiError && error.kind === 'not-found') {
        this.remove(id);
        return null;
      }
      throw error;
    }
  }

  /** Put a job in the list (or update it). */
  upsert(job: Job): void {
    const old = this._byId.get(job.id);
    if (old) {
      const merged = { ...job };
      if (merged.progress === undefined && old.progress && isActive(job.status)) {
        merged.progress = old.progress; // only GET /jobs/{id} says it: keep the last one
      }
      this._jobs[this._jobs.indexOf(old)] = merged;
      this._byId.set(job.id, merged);
      this._jobChanged.emit(merged);
    } else {
      const key = createdKey(job);
      let lo = 0;
      let hi = this._jobs.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (createdKey(this._jobs[mid]) >= key) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      if (lo === this._jobs.length && this._nextToken) {
        return; // older than everything loaded: its page will bring it
      }
      this._jobs.splice(lo, 0, job);
      this._byId.set(job.id, job);
      this._jobChanged.emit(job);
    }
    this._visible = null;
    this._emit();
  }

  remove(id: string): void {
    const i = this._jobs.findIndex(j => j.id === id);
    if (i >= 0) {
      this._jobs.splice(i, 1);
      this._byId.delete(id);
      this._visible = null;
      this._emit();
    }
    this._jobDeleted.emit(id);
  }

  dispose(): void {
    this._events?.close();
    this._events = null;
    Signal.clearData(this);
  }

  private _followEvents(): void {
    let broken = false;
    this._events = this.api.stream('events', {
      onOpen: () => {
        if (broken) {
          broken = false;
          void this.reload(); // what changed while the stream was down
        }
      },
      onError: (error, retry) => {
        broken = true;
        if (!retry || error.kind === 'unreachable') {
          this._fail(error);
        }
      },
      onMessage: m => this._onEvent(m.event, m.data)
    });
  }

  /**
   * One event of `/ds-jobs/events`: `event: server` says whether the job server answers,
   * `event: reset` asks for a reload (the stream could not say what was missed), and a plain event
   * is one job's change: `{"id", "status", "previous_status", "deleted", "job"}` with the whole
   * job (null once deleted). An event without the job has the job fetched.
   */
  private _onEvent(type: string, data: string): void {
    let payload: Record<string, unknown>;
    try {
      payload = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return; // not JSON: an event of a newer server
    }
    if (type === 'server') {
      if (payload.reachable === false) {
        this._setState('unreachable', String(payload.message || 'The job server cannot be reached.'));
      } else if (this._state === 'unreachable') {
        void this.reload();
      }
      return;
    }
    if (type === 'reset') {
      void this.reload();
      return;
    }
    const id = typeof payload.id === 'string' ? payload.id : '';
    if (!id) {
      return;
    }
    if (payload.deleted === true) {
      this.remove(id);
      return;
    }
    const job = payload.job;
    if (job && typeof job === 'object' && (job as Job).id === id) {
      this.upsert(job as Job);
    } else {
      const known = this._byId.get(id);
      if (known && typeof payload.status === 'string') {
        known.status = payload.status as JobStatus;
        this.upsert(known);
      }
      this._scheduleFetch(id);
    }
  }

  /** Fetch `id` soon, once however many events name it meanwhile. */
  private _scheduleFetch(id: string): void {
    if (this._pendingFetch.has(id)) {
      return;
    }
    this._pendingFetch.add(id);
    window.setTimeout(() => {
      this._pendingFetch.delete(id);
      this.refreshJob(id).catch(() => undefined);
    }, 30);
  }

  private _addPage(jobs: Job[]): void {
    for (const job of jobs) {
      if (!this._byId.has(job.id)) {
        this._jobs.push(job);
        this._byId.set(job.id, job);
      }
    }
    this._visible = null;
  }

  private _serverStatuses(): JobStatus[] {
    return STATUS_FILTERS.find(f => f.value === this._statusFilter)?.statuses ?? [];
  }

  private _matches(job: Job): boolean {
    const statuses = this._serverStatuses();
    if (statuses.length > 0 && !statuses.includes(job.status ?? 'JOB_STATUS_UNSPECIFIED')) {
      return false;
    }
    if (!this._text) {
      return true;
    }
    const origin = parseOrigin(job.desc);
    const hay = [job.name ?? '', job.id, job.desc ?? '', origin?.notebook ?? ''].join('\n').toLowerCase();
    return hay.includes(this._text);
  }

  private _fail(error: unknown): void {
    if (error instanceof ApiError && (error.kind === 'missing' || error.kind === 'unreachable')) {
      this._setState(error.kind, error.message);
    } else {
      this._message = error instanceof Error ? error.message : String(error);
      this._emit();
    }
  }

  private _setState(state: ConnectionState, message: string): void {
    this._state = state;
    this._message = message;
    this._emit();
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _state: ConnectionState = 'connecting';
  private _message = '';
  private _jobs: Job[] = [];
  private _byId = new Map<string, Job>();
  private _visible: Job[] | null = null;
  private _nextToken = '';
  private _loading: Promise<void> | null = null;
  private _generation = 0;
  private _statusFilter = 'all';
  private _text = '';
  private _events: StreamHandle | null = null;
  private _pendingFetch = new Set<string>();
  private _changed = new Signal<this, void>(this);
  private _jobChanged = new Signal<this, Job>(this);
  private _jobDeleted = new Signal<this, string>(this);
}
