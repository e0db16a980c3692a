"""``python -m qtsw_tui`` works like ``qtsw``."""

from qtsw_tui.entry import main

raise SystemExit(main())
