"""The console's screens: run history, run detail, results, help, confirmation."""
