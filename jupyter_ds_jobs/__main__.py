"""``python -m jupyter_ds_jobs`` is the ``jupyter ds-jobs`` command line."""

import sys

from jupyter_ds_jobs.cli import main

sys.exit(main())
