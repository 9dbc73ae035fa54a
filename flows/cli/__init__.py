"""The command line: what people type and read (tables, progress, exit codes)."""
