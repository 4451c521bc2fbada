/**
 * jupyter_ds_jobs in JupyterLab: the "DS Jobs" sidebar (a live list of jobs), a job's details in
 * the main area, and "Run notebook as job" (a notebook toolbar button and a palette command).
 * Everything talks to the server extension under `/ds-jobs/` through {@link DsJobsAPI}.
 */

import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification,
  showErrorMessage,
  ToolbarButton,
  WidgetTracker
} from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { ApiError, DsJobsAPI } from './api';
import { JobDetails, IDetailsHost } from './details';
import { askParameters } from './dialogs';
import { JobsModel } from './model';
import { executedName, Origin, serverPath } from './origin';
import { JobsPanel } from './panel';
import { parametersOf } from './pyliteral';
import { Job } from './types';


const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 4h16v3H4zM4 10.5h10v3H4zM4 17h13v3H4z"/>
    <circle cx="19" cy="12" r="2.5"/>
  </g>
</svg>`;

export const jobsIcon = new LabIcon({ name: 'jupyter_ds_jobs:jobs', svgstr: ICON_SVG });

export namespace CommandIDs {
  export const showPanel = 'ds-jobs:show-panel';
  export const openJob = 'ds-jobs:open-job';
  export const runNotebook = 'ds-jobs:run-notebook';
  export const insertAttach = 'ds-jobs:insert-attach';
  export const refresh = 'ds-jobs:refresh';
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function dirname(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter_ds_jobs:plugin',
  description: 'DS Jobs: a live jobs panel, job details with streaming logs, and Run notebook as job.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, INotebookTracker, IDocumentManager, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    docManager: IDocumentManager | null
  ) => {
    const api = new DsJobsAPI();
    const model = new JobsModel(api);
    let started = false;
    const ensureStarted = () => {
      if (!started) {
        started = true;
        void model.start();
      }
    };
    const details = new WidgetTracker<MainAreaWidget<JobDetails>>({ namespace: 'ds-jobs-details' });

    const openJob = (id: string): void => {
      ensureStarted();
      const existing = details.find(w => w.content.jobId === id);
      if (existing) {
        app.shell.activateById(existing.id);
        return;
      }
      const content = new JobDetails(model, host, id);
      const widget = new MainAreaWidget({ content });
      widget.id = `ds-job-${id.replace(/[^A-Za-z0-9_-]/g, '_')}`;
      widget.title.label = model.get(id)?.name || id;
      widget.title.caption = `DS job ${id}`;
      widget.title.icon = jobsIcon;
      widget.title.closable = true;
      content.title.changed.connect(() => (widget.title.label = content.title.label));
      void details.add(widget);
      app.shell.add(widget, 'main');
      app.shell.activateById(widget.id);
    };

    const openNotebookAt = async (path: string, cellId = ''): Promise<NotebookPanel | null> => {
      if (!docManager) {
        return null;
      }
      const widget = docManager.openOrReveal(path);
      if (!(widget instanceof NotebookPanel)) {
        return null;
      }
      await widget.context.ready;
      if (cellId) {
        const index = widget.content.widgets.findIndex(c => c.model.id === cellId);
        if (index >= 0) {
          widget.content.activeCellIndex = index;
          await widget.content.scrollToItem(index, 'center');
        }
      }
      return widget;
    };

    const host: IDetailsHost = {
      openJob,
      canOpenNotebook: (origin: Origin) => !!docManager && serverPath(origin.notebook) !== null,
      openNotebook: async (origin: Origin) => {
        const path = serverPath(origin.notebook);
        if (path === null) {
          throw new Error(`${origin.notebook} is outside the directory JupyterLab serves`);
        }
        await openNotebookAt(path, origin.cellId);
      },
      insertAttach: async (id: string) => {
        const nb = notebooks?.currentWidget;
        if (!nb) {
          throw new Error('Open a notebook first: the line goes below its active cell.');
        }
        NotebookActions.insertBelow(nb.content);
        nb.content.activeCell?.model.sharedModel.setSource(`%ds_job_attach ${id}`);
        app.shell.activateById(nb.id);
      },
      openExecuted: async (job: Job, origin: Origin) => {
        const name = executedName(origin.notebook);
        const path = serverPath(origin.notebook);
        const target = path === null ? name : [dirname(path), name].filter(Boolean).join('/');
        // The server extension puts it beside the notebook when the job ends; if it is not there
        // (yet, or the job was run from elsewhere), it is fetched from the job's outputs.
        const finished = Date.parse(job.finished_at ?? '') || Date.now();
        let placed = false;
        try {
          const model = await app.serviceManager.contents.get(target, { content: false });
          placed = Date.parse(model.last_modified) >= finished - 2000;
        } catch {
          placed = false;
        }
        if (!placed) {
          const text = await api.fileText(job.id, name);
          await app.serviceManager.contents.save(target, { type: 'notebook', format: 'json', content: JSON.parse(text) });
          const open = docManager?.findWidget(target);
          if (open) {
            await open.context.revert();
          }
        }
        await openNotebookAt(target);
      }
    };

    const runNotebook = async (panel: NotebookPanel | null): Promise<void> => {
      if (!panel) {
        await showErrorMessage('Run notebook as job', 'Open a notebook first.');
        return;
      }
      await panel.context.ready;
      const path = panel.context.path;
      const cells = panel.content.model?.cells;
      let source = '';
      for (let i = 0; cells && i < cells.length; i++) {
        const cell = cells.get(i);
        const tags = cell.getMetadata('tags');
        if (cell.type === 'code' && Array.isArray(tags) && tags.includes('parameters')) {
          source = cell.sharedModel.getSource();
          break;
        }
      }
      const parameters = await askParameters(path, parametersOf(source));
      if (parameters === null) {
        return;
      }
      try {
        if (panel.context.model.dirty) {
          await panel.context.save(); // the job runs the notebook as saved
        }
        const { id } = await api.runNotebook(path, parameters);
        ensureStarted();
        await model.refreshJob(id).catch(() => null);
        app.shell.activateById(jobsPanel.id);
        jobsPanel.reveal(id);
        openJob(id);
        Notification.success(`${path} is running as job ${id}`, { autoClose: 4000 });
      } catch (error) {
        const why = error instanceof ApiError && error.field ? `${message(error)} (${error.field})` : message(error);
        await showErrorMessage('Run notebook as job', why);
      }
    };

    const jobsPanel = new JobsPanel({
      model,
      open: openJob,
      onShow: ensureStarted, // connects the first time the panel shows, not at page load
      runNotebook: notebooks ? () => void runNotebook(notebooks.currentWidget) : undefined
    });
    jobsPanel.title.icon = jobsIcon;
    app.shell.add(jobsPanel, 'left', { rank: 800 });
    restorer?.add(jobsPanel, 'ds-jobs-panel');

    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'Show DS Jobs',
      caption: 'The jobs panel',
      execute: async () => {
        await app.restored; // else the restored layout may hide it again
        ensureStarted();
        app.shell.activateById(jobsPanel.id);
      }
    });
    app.commands.addCommand(CommandIDs.openJob, {
      label: args => `Open DS job ${String(args.id ?? '')}`,
      execute: args => openJob(String(args.id))
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh DS Jobs',
      execute: () => model.start()
    });
    app.commands.addCommand(CommandIDs.insertAttach, {
      label: args => `Insert %ds_job_attach ${String(args.id ?? '')}`,
      isEnabled: () => !!notebooks?.currentWidget,
      execute: args => host.insertAttach(String(args.id)).catch(e => showErrorMessage('Insert', message(e)))
    });
    app.commands.addCommand(CommandIDs.runNotebook, {
      label: 'Run Notebook as Job…',
      caption: 'Run the whole notebook as a DS job, with parameters',
      icon: jobsIcon,
      isEnabled: () => !!notebooks?.currentWidget,
      execute: args => {
        const path = typeof args.path === 'string' ? args.path : '';
        const widget = path ? docManager?.findWidget(path) : notebooks?.currentWidget;
        return runNotebook(widget instanceof NotebookPanel ? widget : null);
      }
    });
    if (palette) {
      for (const command of [CommandIDs.runNotebook, CommandIDs.showPanel, CommandIDs.refresh]) {
        palette.addItem({ command, category: 'DS Jobs' });
      }
    }
    notebooks?.currentChanged.connect(() => app.commands.notifyCommandChanged(CommandIDs.runNotebook));

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (panel: NotebookPanel) => {
        const button = new ToolbarButton({
          className: 'ds-jobs-run-notebook-button',
          icon: jobsIcon,
          label: 'Run as job',
          tooltip: 'Run this notebook as a DS job (asks for its parameters)',
          onClick: () => void runNotebook(panel)
        });
        panel.toolbar.insertItem(10, 'dsJobsRunNotebook', button);
        return button;
      }
    });
  }
};

export default plugin;
