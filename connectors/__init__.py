"""Provider connectors and their simulators."""
