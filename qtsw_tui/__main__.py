"""``python -m qtsw_tui`` works like ``qtsw``."""

from qtsw_tui.cli import main

raise SystemExit(main())
