"""The qtsw operator console (Textual). Depends on pipeline_core, never the reverse."""
