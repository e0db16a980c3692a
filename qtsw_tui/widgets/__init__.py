"""The console's widgets: header, stage panes, instrument progress, event table, counters."""
