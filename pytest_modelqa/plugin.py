"""pytest hooks: options, suite collection and session state."""
