"""Command-line interface: `vitlab SUBCOMMAND` (one module per sub-command)."""
