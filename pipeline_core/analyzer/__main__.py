"""``python -m pipeline_core.analyzer --instrument ES [--full]``: the analyzer stage."""

import sys

from pipeline_core.analyzer.runner import main

sys.exit(main())
