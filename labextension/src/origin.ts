/**
 * Where a job came from: the last line of its `desc` (`from notebook PATH, cell [N], id ID`), as
 * jupyter_ds_jobs/common/origin.py writes it. ORIGIN_RE is `common.origin.ORIGIN_RE` spelled in
 * JavaScript (named groups `(?<name>...)`); tests/test_lab_panel.py pins the copy to the source.
 */

import { PageConfig } from '@jupyterlab/coreutils';

export const ORIGIN_RE =
  /^from (?:notebook (?<notebook>.+?)(?:, (?=cell \[)|(?=, id )|$))?(?:cell \[(?<count>\d+)\])?(?:, id (?<cell_id>(?:(?!, ).)+))?$/;

export interface Origin {
  /** The notebook as the kernel knew it (often absolute), or ''. */
  notebook: string;
  /** The cell's execution count, or null for a whole notebook or an unknown cell. */
  count: number | null;
  /** The frontend's cell id, or ''. */
  cellId: string;
}

/** The origin in the last line of a job's `desc`, or null. */
export function parseOrigin(desc: string | undefined): Origin | null {
  if (!desc) {
    return null;
  }
  const trimmed = desc.replace(/\n+$/, '');
  const last = trimmed.slice(trimmed.lastIndexOf('\n') + 1);
  const m = ORIGIN_RE.exec(last);
  if (!m || !m.groups || !(m.groups.notebook || m.groups.count)) {
    return null;
  }
  return {
    notebook: m.groups.notebook ?? '',
    count: m.groups.count ? Number(m.groups.count) : null,
    cellId: m.groups.cell_id ?? ''
  };
}

/** A job's `desc` without its origin line (what the user wrote). */
export function descWithoutOrigin(desc: string | undefined): string {
  if (!desc) {
    return '';
  }
  if (!parseOrigin(desc)) {
    return desc;
  }
  const trimmed = desc.replace(/\n+$/, '');
  const nl = trimmed.lastIndexOf('\n');
  return nl < 0 ? '' : trimmed.slice(0, nl);
}

/** One short line for the list: `report.ipynb [3]`. */
export function originLabel(origin: Origin | null): string {
  if (!origin) {
    return '';
  }
  const name = origin.notebook ? origin.notebook.slice(origin.notebook.lastIndexOf('/') + 1) : '';
  const cell = origin.count !== null ? `[${origin.count}]` : '';
  return [name, cell].filter(Boolean).join(' ');
}

/**
 * The notebook's path relative to the Jupyter server's root (what the document manager opens),
 * or null when it lies outside the root. Relative paths are taken as relative to the root.
 */
export function serverPath(notebook: string, root = PageConfig.getOption('serverRoot')): string | null {
  if (!notebook) {
    return null;
  }
  if (!notebook.startsWith('/') && !/^[A-Za-z]:[\\/]/.test(notebook)) {
    return notebook.replace(/^\.\//, '');
  }
  const norm = (p: string) => p.replace(/\\/g, '/').replace(/\/+$/, '');
  const r = norm(root);
  const p = norm(notebook);
  if (r && p.startsWith(r + '/')) {
    return p.slice(r.length + 1);
  }
  return null;
}

/** `report.ipynb` -> `report.executed.ipynb` (packaging.notebook.executed_name). */
export function executedName(path: string): string {
  const slash = path.lastIndexOf('/');
  const name = path.slice(slash + 1);
  const stem = name.endsWith('.ipynb') ? name.slice(0, -'.ipynb'.length) : name.replace(/\.[^.]*$/, '');
  return `${stem}.executed.ipynb`;
}
