"""qtsw engine: translator, analyzer, merger, runs and the schedule. Never imports Textual."""

from pipeline_core.settings import ENGINE_VERSION as __version__

__all__ = ["__version__"]
