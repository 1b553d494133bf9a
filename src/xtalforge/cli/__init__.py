"""The `xtalforge` command line."""
