"""amazon_sp connector."""
