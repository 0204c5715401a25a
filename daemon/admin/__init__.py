"""Admin socket: protocol and server."""
