"""qtsw engine: translator, analyzer, merger, runs and the schedule. Never imports Textual.

Importing the package imports none of its modules (the ``qtsw`` command starts the warm
launcher before anything heavy is imported: :mod:`pipeline_core.warmstart`).
"""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from pipeline_core.settings import ENGINE_VERSION

        return ENGINE_VERSION
    raise AttributeError(f"module 'pipeline_core' has no attribute {name!r}")
