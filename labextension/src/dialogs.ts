/** The dialogs of the actions: cancel, clone, delete, delete data, set TTL, run a notebook. */

import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { CloneRequest } from './api';
import { el } from './format';
import { JSONValue, literalValue, NotebookParameter } from './pyliteral';
import { Job } from './types';

function field(label: string, input: HTMLElement, hint = ''): HTMLLabelElement {
  const row = el('label', 'ds-jobs-field');
  row.append(el('span', 'ds-jobs-field-label', label), input);
  if (hint) {
    row.append(el('span', 'ds-jobs-field-hint', hint));
  }
  return row;
}

function textInput(value: string, className: string, aria: string): HTMLInputElement {
  const input = el('input', className);
  input.type = 'text';
  input.value = value;
  input.setAttribute('aria-label', aria);
  return input;
}

/** Ask how to cancel: 'graceful', 'hard', or null (keep it running). */
export async function askCancel(job: Job): Promise<'graceful' | 'hard' | null> {
  const result = await showDialog({
    title: `Cancel ${job.name || job.id}?`,
    body:
      'Graceful: the job gets its shutdown signal (SIGTERM by default) and time to finish. ' +
      'Hard: it is killed at once.',
    buttons: [
      Dialog.cancelButton({ label: 'Keep running' }),
      Dialog.warnButton({ label: 'Cancel hard', className: 'ds-jobs-cancel-hard' }),
      Dialog.warnButton({ label: 'Cancel gracefully', className: 'ds-jobs-cancel-graceful' })
    ]
  });
  if (!result.button.accept) {
    return null;
  }
  return result.button.label === 'Cancel hard' ? 'hard' : 'graceful';
}

/** Confirm a destructive action. */
export async function confirm(title: string, body: string, label: string): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label })]
  });
  return result.button.accept;
}

class CloneForm extends Widget implements Dialog.IBodyWidget<CloneRequest> {
  constructor(private readonly job: Job) {
    super();
    this.addClass('ds-jobs-form');
    this._name = textInput(job.name ?? '', 'ds-jobs-clone-name', 'Name of the new job');
    this.node.append(field('Name', this._name));
    const args = job.job_parameters?.arguments ?? [];
    if (args.length > 0) {
      this.node.append(el('h3', '', 'Arguments'));
      for (const a of args) {
        const input = textInput(a.value ?? '', 'ds-jobs-clone-arg', `argument ${a.name}`);
        input.dataset.name = a.name ?? '';
        this._args.push(input);
        this.node.append(field(a.name ?? '', input));
      }
    }
    this.node.append(el('h3', '', 'Environment variables'));
    this._vars = el('div', 'ds-jobs-vars');
    for (const [k, v] of Object.entries(job.job_parameters?.env?.vars ?? {})) {
      this._addVar(k, v, true);
    }
    const add = el('button', 'ds-jobs-button ds-jobs-add-var', 'Add variable');
    add.type = 'button';
    add.onclick = () => this._addVar('', '', false).focus();
    this.node.append(this._vars, add);
  }

  getValue(): CloneRequest {
    const args: Record<string, string> = {};
    const original = new Map((this.job.job_parameters?.arguments ?? []).map(a => [a.name ?? '', a.value ?? '']));
    for (const input of this._args) {
      const name = input.dataset.name ?? '';
      if (input.value !== original.get(name)) {
        args[name] = input.value;
      }
    }
    const env: Record<string, string> = {};
    const oldVars = this.job.job_parameters?.env?.vars ?? {};
    for (const [nameInput, valueInput] of this._varInputs) {
      const name = nameInput.value.trim();
      if (name && oldVars[name] !== valueInput.value) {
        env[name] = valueInput.value;
      }
    }
    return { args, env_vars: env, name: this._name.value.trim() };
  }

  private _addVar(name: string, value: string, fixed: boolean): HTMLInputElement {
    const row = el('div', 'ds-jobs-var');
    const n = textInput(name, 'ds-jobs-var-name', 'variable name');
    n.readOnly = fixed;
    n.placeholder = 'NAME';
    const v = textInput(value, 'ds-jobs-var-value', `value of ${name || 'the new variable'}`);
    row.append(n, el('span', '', '='), v);
    this._vars.append(row);
    this._varInputs.push([n, v]);
    return fixed ? v : n;
  }

  private _name: HTMLInputElement;
  private _args: HTMLInputElement[] = [];
  private _vars: HTMLDivElement;
  private _varInputs: [HTMLInputElement, HTMLInputElement][] = [];
}

/** Ask for the clone's name, arguments and variables (only what changed is sent). */
export async function askClone(job: Job): Promise<CloneRequest | null> {
  const result = await showDialog({
    title: `Clone ${job.name || job.id}`,
    body: new CloneForm(job),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Clone and run' })],
    focusNodeSelector: 'input.ds-jobs-clone-arg, input.ds-jobs-clone-name'
  });
  return result.button.accept ? result.value : null;
}

class TtlForm extends Widget implements Dialog.IBodyWidget<number | 'infinity' | null> {
  constructor(job: Job) {
    super();
    this.addClass('ds-jobs-form');
    this._days = el('input', 'ds-jobs-ttl-days');
    this._days.type = 'number';
    this._days.min = '1';
    this._days.step = '1';
    this._days.value = '14';
    this._forever = el('input', 'ds-jobs-ttl-forever');
    this._forever.type = 'checkbox';
    this._forever.onchange = () => (this._days.disabled = this._forever.checked);
    const expires = job.data_expires_at ? `now until ${new Date(job.data_expires_at).toLocaleString()}` : '';
    this.node.append(
      field('Keep the data for (days from now)', this._days, expires),
      field('Keep it forever', this._forever)
    );
  }

  getValue(): number | 'infinity' | null {
    if (this._forever.checked) {
      return 'infinity';
    }
    const n = Number(this._days.value);
    return Number.isInteger(n) && n > 0 ? n : null;
  }

  private _days: HTMLInputElement;
  private _forever: HTMLInputElement;
}

export async function askTtl(job: Job): Promise<number | 'infinity' | null> {
  const result = await showDialog({
    title: `How long to keep the data of ${job.name || job.id}`,
    body: new TtlForm(job),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Set' })],
    focusNodeSelector: 'input.ds-jobs-ttl-days'
  });
  return result.button.accept ? result.value : null;
}

class ParametersForm extends Widget implements Dialog.IBodyWidget<Record<string, JSONValue>> {
  constructor(params: NotebookParameter[]) {
    super();
    this.addClass('ds-jobs-form');
    if (params.length === 0) {
      this.node.append(
        el('p', '', 'This notebook has no cell tagged "parameters": it runs as it is.')
      );
    } else {
      this.node.append(
        el('p', 'ds-jobs-field-hint', 'Python literals, from the cell tagged "parameters"; what you change is injected after it.')
      );
    }
    for (const p of params) {
      const input = textInput(p.source, 'ds-jobs-param', `parameter ${p.name}`);
      input.dataset.name = p.name;
      input.dataset.original = p.source;
      this._inputs.push(input);
      this.node.append(field(p.name, input, p.comment));
    }
  }

  getValue(): Record<string, JSONValue> {
    const out: Record<string, JSONValue> = {};
    for (const input of this._inputs) {
      if (input.value.trim() !== (input.dataset.original ?? '').trim()) {
        out[input.dataset.name ?? ''] = literalValue(input.value);
      }
    }
    return out;
  }

  private _inputs: HTMLInputElement[] = [];
}

/** Ask for a notebook's parameters (prefilled from its `parameters` cell); the changed ones. */
export async function askParameters(
  path: string,
  params: NotebookParameter[]
): Promise<Record<string, JSONValue> | null> {
  const result = await showDialog({
    title: `Run ${path.slice(path.lastIndexOf('/') + 1)} as a job`,
    body: new ParametersForm(params),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run as job' })],
    focusNodeSelector: 'input.ds-jobs-param'
  });
  return result.button.accept ? result.value : null;
}
