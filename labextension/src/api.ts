/**
 * The one REST client of the panel: every request to the server extension goes through
 * {@link DsJobsAPI}, bound to the `/ds-jobs/` namespace of the Jupyter server and sent with
 * JupyterLab's `ServerConnection` (its token and XSRF headers). UI code never fetches itself.
 *
 * Errors: {@link ApiError}, with a `kind` the UI words its message by. A 404 that is not the
 * extension's JSON `{"message", "field"}` means the server extension is not there at all.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { SSEMessage, SSEParser } from './sse';
import { Job, JobPage, JobStatus, ServerStatus, StoredFile } from './types';

export const NAMESPACE = 'ds-jobs';

export type ErrorKind =
  | 'missing' // the server extension is not installed or not enabled
  | 'unreachable' // JupyterLab's server, or the job server behind it, cannot be reached
  | 'invalid' // 400: the field named in `field` is wrong
  | 'not-found' // 404 from the extension: no such job or file
  | 'conflict' // 409: not in this state (e.g. cancelling a finished job)
  | 'other';

export class ApiError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly status = 0,
    readonly field = ''
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The error of a response that is not OK, from its body (JSON when it is the extension's). */
  static fromResponse(status: number, body: string): ApiError {
    let data: { message?: unknown; field?: unknown } | null = null;
    try {
      const parsed: unknown = JSON.parse(body);
      if (parsed !== null && typeof parsed === 'object') {
        data = parsed as { message?: unknown; field?: unknown };
      }
    } catch {
      data = null;
    }
    const message = data && typeof data.message === 'string' ? data.message : '';
    const field = data && typeof data.field === 'string' ? data.field : '';
    if (status === 404 && !message) {
      return new ApiError(
        'missing',
        'The DS Jobs server extension is not enabled in this Jupyter server: install ' +
          'jupyter_ds_jobs into the environment JupyterLab runs in (pip install jupyter_ds_jobs), ' +
          'check `jupyter server extension list`, then restart JupyterLab.',
        status
      );
    }
    const kind: ErrorKind =
      status === 400
        ? 'invalid'
        : status === 404
          ? 'not-found'
          : status === 409
            ? 'conflict'
            : status === 502 || status === 503 || status === 504
              ? 'unreachable'
              : 'other';
    const text =
      message ||
      (kind === 'unreachable'
        ? 'The job server cannot be reached.'
        : `The server answered ${status}.`);
    return new ApiError(kind, text, status, field);
  }
}

/** A stream that reconnects until it is closed or has ended; see {@link DsJobsAPI.stream}. */
export interface StreamHandle {
  close(): void;
  /** Resolves when the stream is closed or its `end` event came. */
  readonly done: Promise<void>;
}

export interface StreamOptions {
  onMessage(m: SSEMessage): void;
  /** Each time the stream (re)connects. */
  onOpen?(): void;
  /** Each failure; `retry` says whether it will reconnect. */
  onError?(error: ApiError, retry: boolean): void;
  /** The query of the request, given the last event id seen ('' at first). */
  query?(lastEventId: string): Record<string, string>;
  /** The event type that ends the stream for good. */
  endEvent?: string;
}

export interface CloneRequest {
  args: Record<string, string>;
  env_vars: Record<string, string>;
  name: string;
}

export class DsJobsAPI {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  /** The URL of `path` under the namespace (for links: downloads). */
  url(path: string, query: Record<string, string> = {}): string {
    const base = URLExt.join(this.settings.baseUrl, NAMESPACE, path);
    const q = URLExt.objectToQueryString(query);
    return q === '?' ? base : base + q;
  }

  /** One JSON request; the parsed body (undefined when empty), or an {@link ApiError}. */
  async request<T>(path: string, init: RequestInit = {}, query: Record<string, string> = {}): Promise<T> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(path, query), init, this.settings);
    } catch (error) {
      throw new ApiError('unreachable', `JupyterLab's server cannot be reached: ${String(error)}`);
    }
    const body = await response.text();
    if (!response.ok) {
      throw ApiError.fromResponse(response.status, body);
    }
    return (body ? JSON.parse(body) : undefined) as T;
  }

  private _json<T>(method: string, path: string, body: unknown): Promise<T> {
    return this.request<T>(path, {
      method,
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' }
    });
  }

  status(): Promise<ServerStatus> {
    return this.request<ServerStatus>('status');
  }

  listJobs(opts: { status?: readonly JobStatus[]; pageSize?: number; pageToken?: string } = {}): Promise<JobPage> {
    const query: Record<string, string> = {};
    if (opts.status && opts.status.length > 0) {
      query.status = opts.status.join(',');
    }
    if (opts.pageSize) {
      query.page_size = String(opts.pageSize);
    }
    if (opts.pageToken) {
      query.page_token = opts.pageToken;
    }
    return this.request<JobPage>('jobs', {}, query);
  }

  getJob(id: string): Promise<Job> {
    return this.request<Job>(`jobs/${encodeURIComponent(id)}`);
  }

  cancel(id: string, graceful: boolean): Promise<unknown> {
    return this._json('POST', `jobs/${encodeURIComponent(id)}/cancel`, { graceful });
  }

  clone(id: string, req: CloneRequest): Promise<{ id: string }> {
    return this._json('POST', `jobs/${encodeURIComponent(id)}/clone`, req);
  }

  deleteJob(id: string): Promise<unknown> {
    return this.request(`jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
  }

  deleteData(id: string): Promise<unknown> {
    return this._json('POST', `jobs/${encodeURIComponent(id)}/delete-data`, {});
  }

  /** Keep the job's data `days` days from now, or forever. */
  setTtl(id: string, days: number | 'infinity'): Promise<unknown> {
    return this._json('PUT', `jobs/${encodeURIComponent(id)}/ttl`, { days });
  }

  async files(id: string): Promise<StoredFile[]> {
    const data = await this.request<{ files?: StoredFile[] } | StoredFile[]>(
      `jobs/${encodeURIComponent(id)}/files`
    );
    return Array.isArray(data) ? data : (data.files ?? []);
  }

  /** The URL that streams one stored file of a job (an output or a log file). */
  fileUrl(id: string, path: string, kind = ''): string {
    const parts = path.split('/').map(encodeURIComponent).join('/');
    return this.url(`jobs/${encodeURIComponent(id)}/files/${parts}`, kind ? { kind } : {});
  }

  /** The text of one stored file (the executed notebook). */
  async fileText(id: string, path: string): Promise<string> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.fileUrl(id, path, 'output'), {}, this.settings);
    } catch (error) {
      throw new ApiError('unreachable', `JupyterLab's server cannot be reached: ${String(error)}`);
    }
    const body = await response.text();
    if (!response.ok) {
      throw ApiError.fromResponse(response.status, body);
    }
    return body;
  }

  runNotebook(path: string, parameters: Record<string, unknown>): Promise<{ id: string }> {
    return this._json('POST', 'notebooks/run', { path, parameters });
  }

  /**
   * Follow an event stream under the namespace: reconnects (with backoff, sending the last event
   * id as `Last-Event-ID` and as `opts.query` puts it) until closed, until `opts.endEvent` comes,
   * or until an error that a retry cannot fix (the extension missing, a 400 or a 404).
   */
  stream(path: string, opts: StreamOptions): StreamHandle {
    let closed = false;
    let controller: AbortController | null = null;
    let wake: (() => void) | null = null;
    const parser = new SSEParser(m => {
      if (opts.endEvent && m.event === opts.endEvent) {
        ended = true;
      }
      opts.onMessage(m);
    });
    let ended = false;
    const run = async (): Promise<void> => {
      let delay = 250;
      while (!closed && !ended) {
        controller = new AbortController();
        const lastId = parser.lastEventId;
        const headers: Record<string, string> = { Accept: 'text/event-stream' };
        if (lastId) {
          headers['Last-Event-ID'] = lastId;
        }
        try {
          const url = this.url(path, opts.query ? opts.query(lastId) : {});
          const response = await ServerConnection.makeRequest(
            url,
            { headers, signal: controller.signal, cache: 'no-store' },
            this.settings
          );
          if (!response.ok) {
            throw ApiError.fromResponse(response.status, await response.text());
          }
          opts.onOpen?.();
          delay = 250;
          const reader = response.body!.getReader();
          const decoder = new TextDecoder();
          while (!closed && !ended) {
            const { done, value } = await reader.read();
            if (done) {
              break;
            }
            parser.push(decoder.decode(value, { stream: true }));
          }
          if (ended || closed) {
            controller.abort();
          }
        } catch (error) {
          if (closed) {
            return;
          }
          const e =
            error instanceof ApiError
              ? error
              : new ApiError('unreachable', `the event stream broke: ${String(error)}`);
          const retry = !['missing', 'invalid', 'not-found'].includes(e.kind);
          opts.onError?.(e, retry);
          if (!retry) {
            return;
          }
        }
        if (closed || ended) {
          return;
        }
        await new Promise<void>(resolve => {
          wake = resolve;
          setTimeout(resolve, delay);
        });
        delay = Math.min(delay * 2, 5000);
      }
    };
    const done = run();
    return {
      done,
      close: () => {
        closed = true;
        controller?.abort();
        wake?.();
      }
    };
  }
}
