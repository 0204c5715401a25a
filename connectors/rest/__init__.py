"""rest connector."""
