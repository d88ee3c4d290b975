"""The `chatspec` command: one entry point over the project's tools (see `chatspec.cli`)."""
