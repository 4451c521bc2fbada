/** How times, durations, sizes and statuses read in the panel. */

import { isActive, Job, JobStatus } from './types';

const STATUS_LABELS: Record<JobStatus, string> = {
  JOB_STATUS_UNSPECIFIED: 'unknown',
  CREATING: 'creating',
  PREPARING: 'preparing',
  EXECUTING: 'running',
  UPLOADING_OUTPUT: 'uploading',
  CANCELLING: 'cancelling',
  SUCCESS: 'success',
  ERROR: 'error',
  CANCELLED: 'cancelled'
};

export function statusLabel(status: JobStatus | undefined): string {
  return STATUS_LABELS[status ?? 'JOB_STATUS_UNSPECIFIED'] ?? String(status).toLowerCase();
}

/** A status badge: `data-status` carries the enum name (styles and tests key on it). */
export function statusBadge(status: JobStatus | undefined): HTMLSpanElement {
  const badge = document.createElement('span');
  badge.className = 'ds-jobs-badge';
  updateBadge(badge, status);
  return badge;
}

export function updateBadge(badge: HTMLElement, status: JobStatus | undefined): void {
  const s = status ?? 'JOB_STATUS_UNSPECIFIED';
  if (badge.dataset.status !== s) {
    badge.dataset.status = s;
    badge.textContent = statusLabel(s);
    badge.title = s;
  }
}

export function parseTime(value: string | undefined): number | null {
  if (!value) {
    return null;
  }
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

const pad = (n: number) => String(n).padStart(2, '0');

/** `14:03:07` today, `Nov 28 14:03` this year, `2025-11-28 14:03` before. */
export function formatTime(value: string | undefined, now = Date.now()): string {
  const t = parseTime(value);
  if (t === null) {
    return '';
  }
  const d = new Date(t);
  const n = new Date(now);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.toDateString() === n.toDateString()) {
    return `${hm}:${pad(d.getSeconds())}`;
  }
  if (d.getFullYear() === n.getFullYear()) {
    return `${d.toLocaleString('en', { month: 'short' })} ${d.getDate()} ${hm}`;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`;
}

/** The full local date and time, for titles. */
export function formatFullTime(value: string | undefined): string {
  const t = parseTime(value);
  return t === null ? '' : new Date(t).toLocaleString();
}

/** `0.4s`, `12s`, `3m 05s`, `2h 04m`, `3d 2h`. */
export function formatDuration(ms: number): string {
  if (ms < 0) {
    ms = 0;
  }
  const s = ms / 1000;
  if (s < 10) {
    return `${s.toFixed(1)}s`;
  }
  if (s < 60) {
    return `${Math.floor(s)}s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m}m ${pad(Math.floor(s % 60))}s`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return `${h}h ${pad(m % 60)}m`;
  }
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** How long the job ran (or has been running); '' before it started. */
export function jobDuration(job: Job, now = Date.now()): string {
  const start = parseTime(job.started_at) ?? parseTime(job.created_at);
  if (start === null) {
    return '';
  }
  const end = parseTime(job.finished_at) ?? (isActive(job.status) ? now : null);
  return end === null ? '' : formatDuration(end - start);
}

export function formatBytes(value: string | number | undefined): string {
  const n = Number(value ?? 0);
  if (!Number.isFinite(n)) {
    return '';
  }
  if (n < 1024) {
    return `${n} B`;
  }
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** The job's return code where the extension sent one. */
export function returnCode(job: Job): string {
  const rc = job.return_code ?? job.result?.return_code;
  return rc === undefined || rc === null ? '' : String(rc);
}

/** The job's progress, 0..100, or null. */
export function progressOf(job: Job): { percent: number; message: string } | null {
  const p = job.progress;
  if (!p) {
    return null;
  }
  const percent = Math.max(0, Math.min(100, Number(p.progress ?? 0)));
  return { percent: Number.isFinite(percent) ? percent : 0, message: p.message ?? '' };
}

/** Make an element with a class and optional text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}
