import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Clipboard, MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { pythonString } from './format';
// The panel is added to the shell at activation, so it is needed at once.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { SidebarPanel } from './panel';
import { CommandIDs } from './tokens';

/** A flask: the panel's icon (stroke follows the theme through `jp-icon3`). */
const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<path class="jp-icon3" fill="#616161" d="M9 2h6v2h-1v5.2l5.6 9.3A2.3 2.3 0 0 1 17.6 22H6.4a2.3 2.3 0 0 1-2-3.5L10 9.2V4H9zm3 9.3L8.3 17h7.4z"/>
</svg>`;

export const mlopsIcon = new LabIcon({
  name: 'jupyter-mlops:icon',
  svgstr: ICON_SVG
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-mlops:sidebar',
  description:
    'Browse runs, sweeps, models, datasets, endpoints and compute, live.',
  autoStart: true,
  optional: [ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const views = new Map<string, MainAreaWidget<Widget>>();

    /** Open a view in the main area, or bring the one already open to the front. */
    type Views = typeof import('./views');
    const show = async (
      key: string,
      make: (v: Views) => Widget & { poll(): Promise<void> }
    ) => {
      const open = views.get(key);
      if (open && !open.isDisposed) {
        app.shell.activateById(open.id);
        return;
      }
      // The views (and the chart library) load when the first one opens, not at start.
      const content = make(await import('./views'));
      const widget = new MainAreaWidget({ content });
      widget.id = `${content.id}-area`;
      widget.title.icon = mlopsIcon;
      widget.title.closable = true;
      content.title.changed.connect(() => {
        widget.title.label = content.title.label;
        widget.title.caption = content.title.caption;
      });
      views.set(key, widget);
      app.shell.add(widget, 'main');
      app.shell.activateById(widget.id);
      void content.poll();
    };

    const links = {
      openRun: (id: string) =>
        void app.commands.execute(CommandIDs.openRun, { id }),
      openSweep: (id: string) =>
        void app.commands.execute(CommandIDs.openSweep, { id })
    };
    const panel = new SidebarPanel(settings, {
      openRun: id => void app.commands.execute(CommandIDs.openRun, { id }),
      openSweep: id => void app.commands.execute(CommandIDs.openSweep, { id }),
      compare: ids => void app.commands.execute(CommandIDs.compareRuns, { ids })
    });
    panel.title.icon = mlopsIcon;
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, 'jupyter-mlops-sidebar');
    }

    app.commands.addCommand(CommandIDs.openPanel, {
      describedBy: {
        args: {
          type: 'object',
          properties: {}
        }
      },
      label: 'Show the ML workspace panel',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.openRun, {
      describedBy: {
        args: {
          type: 'object',
          properties: { id: { type: 'string', description: 'the run id' } }
        }
      },
      label: 'Open run',
      execute: args => {
        const id = String(args.id ?? panel.contextRun ?? '');
        if (id) {
          return show(`run:${id}`, v => new v.RunView(settings, id, links));
        }
      }
    });
    app.commands.addCommand(CommandIDs.openSweep, {
      describedBy: {
        args: {
          type: 'object',
          properties: { id: { type: 'string', description: 'the sweep id' } }
        }
      },
      label: 'Open sweep',
      execute: args => {
        const id = String(args.id ?? '');
        return show(
          `sweep:${id}`,
          v =>
            new v.SweepView(
              settings,
              id,
              run => void app.commands.execute(CommandIDs.openRun, { id: run })
            )
        );
      }
    });
    app.commands.addCommand(CommandIDs.compareRuns, {
      describedBy: {
        args: {
          type: 'object',
          properties: {
            ids: {
              type: 'array',
              items: { type: 'string' },
              description: 'run ids'
            }
          }
        }
      },
      label: 'Compare selected runs',
      isEnabled: () => panel.selected.length >= 2,
      execute: args => {
        const ids = (args.ids as string[] | undefined) ?? panel.selected;
        if (ids.length >= 2) {
          return show(
            `compare:${ids.join(',')}`,
            v => new v.CompareView(settings, ids)
          );
        }
      }
    });

    /** Put code in a new cell below the active one of the current notebook. */
    const insert = (code: string) => {
      const notebook = notebooks?.currentWidget;
      if (!notebook) {
        return;
      }
      NotebookActions.insertBelow(notebook.content);
      notebook.content.activeCell?.model.sharedModel.setSource(code);
      app.shell.activateById(notebook.id);
    };
    const hasNotebook = () => !!notebooks?.currentWidget;

    app.commands.addCommand(CommandIDs.insertRun, {
      describedBy: {
        args: {
          type: 'object',
          properties: {}
        }
      },
      label: 'Insert ws.get_run(…) into the notebook',
      isEnabled: () => hasNotebook() && !!panel.contextRun,
      execute: () => {
        if (panel.contextRun) {
          insert(
            `import jupyter_mlops as mlops\nws = mlops.workspace()\nrun = ws.get_run(${pythonString(panel.contextRun)})`
          );
        }
      }
    });
    app.commands.addCommand(CommandIDs.attachWidget, {
      describedBy: {
        args: {
          type: 'object',
          properties: {}
        }
      },
      label: 'Attach its live widget in the notebook',
      isEnabled: () => hasNotebook() && !!panel.contextRun,
      execute: () => {
        if (panel.contextRun) {
          insert(`%load_ext jupyter_mlops\n%mlops attach ${panel.contextRun}`);
        }
      }
    });
    app.commands.addCommand(CommandIDs.insertModel, {
      describedBy: {
        args: {
          type: 'object',
          properties: {}
        }
      },
      label: 'Insert ws.models.get(…) into the notebook',
      isEnabled: () => hasNotebook() && !!panel.contextModel,
      execute: () => {
        const model = panel.contextModel;
        if (model) {
          insert(
            `import jupyter_mlops as mlops\nws = mlops.workspace()\nmodel = ws.models.get(${pythonString(model.name)}, ${model.version})`
          );
        }
      }
    });
    app.commands.addCommand(CommandIDs.copyRunId, {
      describedBy: {
        args: {
          type: 'object',
          properties: {}
        }
      },
      label: 'Copy run id',
      isEnabled: () => !!panel.contextRun,
      execute: () => {
        if (panel.contextRun) {
          Clipboard.copyToSystem(panel.contextRun);
        }
      }
    });

    const runSelector = '.mlops-sidebar .mlops-run-row';
    [
      CommandIDs.openRun,
      CommandIDs.insertRun,
      CommandIDs.attachWidget,
      CommandIDs.copyRunId,
      CommandIDs.compareRuns
    ].forEach((command, i) =>
      app.contextMenu.addItem({ command, selector: runSelector, rank: i })
    );
    app.contextMenu.addItem({
      command: CommandIDs.insertModel,
      selector: '.mlops-sidebar .mlops-model-row',
      rank: 0
    });
  }
};

export default plugin;
