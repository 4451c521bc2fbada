/**
 * A job in the main area: what it ran (command, arguments, environment, instance type), its
 * inputs and outputs (download links), return code, status details, file errors and progress,
 * the actions, and its live log (a {@link LogView}).
 *
 * It stays current from the model's events; while the job runs and the tab is visible it also
 * fetches the job every 1.5 s, for the progress (which changes without a status change).
 */

import { showErrorMessage } from '@jupyterlab/apputils';
import { Panel, Widget } from '@lumino/widgets';

import { DsJobsAPI } from './api';
import { askCancel, askClone, askTtl, confirm } from './dialogs';
import {
  el,
  formatBytes,
  formatFullTime,
  jobDuration,
  progressOf,
  returnCode,
  statusBadge,
  updateBadge
} from './format';
import { LogView } from './logview';
import { JobsModel } from './model';
import { descWithoutOrigin, executedName, Origin, parseOrigin } from './origin';
import { FINAL_STATUSES, isActive, Job, JobFile } from './types';

/** What the details need from the application. */
export interface IDetailsHost {
  openJob(id: string): void;
  openNotebook(origin: Origin): Promise<void>;
  canOpenNotebook(origin: Origin): boolean;
  insertAttach(id: string): Promise<void>;
  openExecuted(job: Job, origin: Origin): Promise<void>;
}

const POLL_MS = 1500;

export class JobDetails extends Panel {
  constructor(
    private readonly model: JobsModel,
    private readonly host: IDetailsHost,
    readonly jobId: string
  ) {
    super();
    this.addClass('ds-job-details');
    this.node.dataset.jobId = jobId;
    this._api = model.api;
    this._top = new Widget();
    this._top.addClass('ds-job-top');
    this._header = el('div', 'ds-job-header');
    this._actions = el('div', 'ds-job-actions');
    this._actions.setAttribute('role', 'toolbar');
    this._actions.setAttribute('aria-label', 'Job actions');
    this._info = el('div', 'ds-job-info');
    this._top.node.append(this._header, this._actions, this._info);
    this._log = new LogView(this._api, jobId, `${jobId}.log`);
    this.addWidget(this._top);
    this.addWidget(this._log);
    this._buildActions();
    model.jobChanged.connect((_, job) => {
      if (job.id === this.jobId) {
        this._show(job);
      }
    }, this);
    model.jobDeleted.connect((_, id) => {
      if (id === this.jobId) {
        this._deleted = true;
        this._render();
      }
    }, this);
    const known = model.get(jobId);
    if (known) {
      this._show(known);
    }
    void this.refresh();
    this._log.start();
  }

  get job(): Job | null {
    return this._job;
  }

  /** Fetch the job again. */
  async refresh(): Promise<void> {
    try {
      const job = await this.model.refreshJob(this.jobId);
      if (job) {
        this._show(job);
      }
    } catch (error) {
      this._error = error instanceof Error ? error.message : String(error);
      this._render();
    }
  }

  dispose(): void {
    window.clearInterval(this._poll);
    super.dispose();
  }

  protected onAfterAttach(): void {
    this._poll = window.setInterval(() => {
      if (this.isVisible && this._job && isActive(this._job.status) && !this._polling) {
        this._polling = true;
        void this.refresh().finally(() => (this._polling = false));
      }
    }, POLL_MS);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this._poll);
  }

  private _show(job: Job): void {
    const snapshot = JSON.stringify(job);
    if (snapshot !== this._snapshot) {
      this._snapshot = snapshot;
      this._job = { ...job };
      this._error = '';
      this.title.label = job.name || job.id;
      this._render();
    }
  }

  private _button(label: string, cls: string, title: string, run: () => Promise<unknown>): HTMLButtonElement {
    const b = el('button', `ds-jobs-button ${cls}`, label);
    b.title = title;
    b.onclick = async () => {
      b.disabled = true;
      try {
        await run();
      } catch (error) {
        await showErrorMessage(`${label} failed`, error instanceof Error ? error.message : String(error));
      } finally {
        this._render();
      }
    };
    this._actions.appendChild(b);
    return b;
  }

  private _buildActions(): void {
    const id = this.jobId;
    const api = this._api;
    this._cancel = this._button('Cancel…', 'ds-job-cancel', 'Cancel the job (gracefully or at once)', async () => {
      const how = this._job && (await askCancel(this._job));
      if (how) {
        await api.cancel(id, how === 'graceful');
        await this.refresh();
      }
    });
    this._clone = this._button('Clone…', 'ds-job-clone', 'Run it again, with edited arguments and variables', async () => {
      const req = this._job && (await askClone(this._job));
      if (req) {
        const { id: newId } = await api.clone(id, req);
        await this.model.refreshJob(newId);
        this.host.openJob(newId);
      }
    });
    this._ttl = this._button('Set TTL…', 'ds-job-ttl', 'How long the job keeps its data', async () => {
      const days = this._job && (await askTtl(this._job));
      if (days !== null && days !== undefined) {
        await api.setTtl(id, days);
        await this.refresh();
      }
    });
    this._deleteData = this._button('Delete data…', 'ds-job-delete-data', 'Delete its files, keep the job', async () => {
      if (await confirm('Delete the data?', `The files of ${this._label()} are deleted; the job stays.`, 'Delete data')) {
        await api.deleteData(id);
        await this.refresh();
      }
    });
    this._delete = this._button('Delete…', 'ds-job-delete', 'Delete the job and its data', async () => {
      if (await confirm('Delete the job?', `${this._label()} and its data are deleted.`, 'Delete')) {
        await api.deleteJob(id);
        this.model.remove(id);
      }
    });
    this._openNb = this._button('Open notebook', 'ds-job-open-notebook', 'Open the notebook this job came from', async () => {
      const origin = parseOrigin(this._job?.desc);
      if (origin) {
        await this.host.openNotebook(origin);
      }
    });
    this._openExecuted = this._button(
      'Open executed notebook',
      'ds-job-open-executed',
      'Open the notebook as the job ran it, with its outputs',
      async () => {
        const origin = parseOrigin(this._job?.desc);
        if (this._job && origin) {
          await this.host.openExecuted(this._job, origin);
        }
      }
    );
    this._button(
      'Insert %ds_job_attach',
      'ds-job-insert-attach',
      'Insert "%ds_job_attach <id>" below the active cell of the current notebook',
      () => this.host.insertAttach(id)
    );
  }

  private _label(): string {
    return this._job?.name || this.jobId;
  }

  private _render(): void {
    const job = this._job;
    this.node.dataset.status = job?.status ?? '';
    this._header.textContent = '';
    const title = el('h2', 'ds-job-name', job?.name || this.jobId);
    const badge = this._badge ?? statusBadge(job?.status);
    this._badge = badge;
    updateBadge(badge, job?.status);
    this._header.append(title, badge, el('code', 'ds-job-id', this.jobId));
    if (this._deleted) {
      this._header.append(el('span', 'ds-job-deleted', 'deleted'));
    }
    const status = job?.status;
    const final = status !== undefined && FINAL_STATUSES.includes(status);
    const origin = parseOrigin(job?.desc);
    this._cancel.disabled = this._deleted || !isActive(status) || status === 'CANCELLING';
    this._clone.disabled = this._deleted || !job;
    this._ttl.disabled = this._deleted || !job;
    this._deleteData.disabled = this._deleted || !final || !!job?.data_cleared;
    this._delete.disabled = this._deleted || !final;
    this._openNb.hidden = !origin || !this.host.canOpenNotebook(origin);
    const executed = origin && origin.count === null ? executedName(origin.notebook) : '';
    this._openExecuted.hidden = !(
      executed &&
      final &&
      !job?.data_cleared &&
      (job?.output_files ?? []).some(f => f.desc?.path === executed)
    );
    this._info.textContent = '';
    if (this._error) {
      this._info.append(el('p', 'ds-job-error', this._error));
    }
    if (job) {
      this._info.append(...this._facts(job, origin), ...this._sections(job));
    }
  }

  private _facts(job: Job, origin: Origin | null): HTMLElement[] {
    const dl = el('dl', 'ds-job-facts');
    const add = (term: string, value: string | HTMLElement, cls = ''): void => {
      if (value === '') {
        return;
      }
      const dd = el('dd', cls);
      dd.append(value);
      dl.append(el('dt', '', term), dd);
    };
    const progress = progressOf(job);
    if (progress) {
      const box = el('div', 'ds-job-progress');
      const bar = el('progress');
      bar.max = 100;
      bar.value = progress.percent;
      bar.setAttribute('aria-label', 'progress');
      box.append(bar, el('span', 'ds-job-progress-message', `${progress.percent}% ${progress.message}`.trim()));
      add('Progress', box);
    }
    add('Status details', job.status_details ?? '', 'ds-job-status-details');
    add('Return code', returnCode(job), 'ds-job-return-code');
    add('Created', formatFullTime(job.created_at));
    add('Started', formatFullTime(job.started_at));
    add('Finished', formatFullTime(job.finished_at));
    add('Duration', jobDuration(job));
    if (origin) {
      const where = [origin.notebook && `notebook ${origin.notebook}`, origin.count !== null && `cell [${origin.count}]`]
        .filter(Boolean)
        .join(', ');
      add('From', where, 'ds-job-origin');
    }
    const requested = (job.job_parameters?.cloud_instance_types ?? []).map(t => t.name).filter(Boolean).join(', ');
    const actual = job.actual_cloud_instance_type?.name ?? '';
    add('Instance type', [requested, actual && actual !== requested ? `ran on ${actual}` : ''].filter(Boolean).join(' · '));
    if (job.parent_job_id) {
      const link = el('button', 'ds-jobs-link', job.parent_job_id);
      link.onclick = () => this.host.openJob(job.parent_job_id!);
      add('Cloned from', link);
    }
    const data = [
      job.data_size_bytes !== undefined ? formatBytes(job.data_size_bytes) : '',
      job.data_cleared ? 'deleted' : '',
      job.data_expires_at ? `kept until ${formatFullTime(job.data_expires_at)}` : job.data_cleared ? '' : 'kept forever'
    ]
      .filter(Boolean)
      .join(' · ');
    add('Data', data, 'ds-job-data');
    const desc = descWithoutOrigin(job.desc);
    return desc ? [dl, el('p', 'ds-job-desc', desc)] : [dl];
  }

  private _sections(job: Job): HTMLElement[] {
    const p = job.job_parameters ?? {};
    const out: HTMLElement[] = [];
    const section = (title: string, cls: string, ...children: (HTMLElement | string)[]): void => {
      const s = el('section', `ds-job-section ${cls}`);
      s.append(el('h3', '', title), ...children);
      out.push(s);
    };
    if (p.cmd) {
      section('Command', 'ds-job-cmd', el('pre', '', p.cmd));
    }
    if (p.arguments?.length) {
      section('Arguments', 'ds-job-args', table(p.arguments.map(a => [a.name ?? '', a.value ?? ''])));
    }
    const env = p.env ?? {};
    const envRows: [string, string][] = Object.entries(env.vars ?? {});
    const py = env.python_env;
    const envExtra: string[] = [];
    if (py?.python_version) {
      envExtra.push(`Python ${py.python_version}`);
    }
    if (py?.requirements?.length) {
      envExtra.push(`requirements: ${py.requirements.join(', ')}`);
    }
    if (py?.local_modules?.length) {
      envExtra.push(`local modules: ${py.local_modules.map(f => f.desc?.path ?? '').join(', ')}`);
    }
    if (env.docker_image_spec?.image_url || env.docker_image_resource_id) {
      envExtra.push(`image: ${env.docker_image_spec?.image_url || env.docker_image_resource_id}`);
    }
    if (envRows.length || envExtra.length) {
      section('Environment', 'ds-job-env', ...envExtra.map(t => el('p', '', t)), ...(envRows.length ? [table(envRows)] : []));
    }
    if (p.input_files?.length) {
      section('Inputs', 'ds-job-inputs', this._fileList(p.input_files, ''));
    }
    const outputs = job.output_files ?? [];
    const declared = (p.output_files ?? []).filter(d => !outputs.some(f => f.desc?.path === d.path));
    if (outputs.length || declared.length) {
      const list = this._fileList(outputs, job.data_cleared ? '' : 'output');
      for (const d of declared) {
        list.append(el('li', 'ds-job-file-missing', `${d.path ?? ''}${d.var ? ` (${d.var})` : ''}: not produced yet`));
      }
      section('Outputs', 'ds-job-outputs', list);
    }
    if (job.log_files?.length) {
      section('Log files', 'ds-job-log-files', this._fileList(job.log_files, job.data_cleared ? '' : 'log'));
    }
    if (job.file_errors?.length) {
      const list = el('ul', 'ds-job-file-errors');
      for (const e of job.file_errors) {
        const name = e.output_file_desc?.path ?? e.log_file_name ?? '';
        list.append(el('li', '', `${name}: ${e.description ?? e.type ?? 'failed'}`));
      }
      section('File errors', 'ds-job-errors', list);
    }
    return out;
  }

  /** Files; with download links of this `kind` of stored file ('' for no links). */
  private _fileList(files: JobFile[], kind: string): HTMLUListElement {
    const list = el('ul', 'ds-job-files');
    for (const f of files) {
      const path = f.desc?.path ?? '';
      const li = el('li');
      const zip = f.compression_type === 'ZIP';
      if (kind && path) {
        const a = el('a', 'ds-job-download', path);
        a.href = this._api.fileUrl(this.jobId, path, kind);
        a.download = zip ? `${path.split('/').pop()}.zip` : (path.split('/').pop() ?? path);
        a.title = `Download ${path}`;
        li.append(a);
      } else {
        li.append(el('span', '', path));
      }
      const meta = [f.desc?.var ? `$${f.desc.var}` : '', f.size_bytes !== undefined ? formatBytes(f.size_bytes) : '', zip ? 'a directory, as ZIP' : '']
        .filter(Boolean)
        .join(' · ');
      if (meta) {
        li.append(el('span', 'ds-job-file-meta', ` ${meta}`));
      }
      list.append(li);
    }
    return list;
  }

  private _api: DsJobsAPI;
  private _top: Widget;
  private _header: HTMLDivElement;
  private _actions: HTMLDivElement;
  private _info: HTMLDivElement;
  private _log: LogView;
  private _badge: HTMLSpanElement | null = null;
  private _job: Job | null = null;
  private _snapshot = '';
  private _error = '';
  private _deleted = false;
  private _poll = 0;
  private _polling = false;
  private _cancel!: HTMLButtonElement;
  private _clone!: HTMLButtonElement;
  private _ttl!: HTMLButtonElement;
  private _deleteData!: HTMLButtonElement;
  private _delete!: HTMLButtonElement;
  private _openNb!: HTMLButtonElement;
  private _openExecuted!: HTMLButtonElement;
}

function table(rows: [string, string][]): HTMLTableElement {
  const t = el('table', 'ds-job-table');
  for (const [k, v] of rows) {
    const tr = el('tr');
    tr.append(el('th', '', k), el('td', '', v));
    t.append(tr);
  }
  return t;
}
