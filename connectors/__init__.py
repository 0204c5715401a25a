"""Provider connectors and their simulators.

The shared machinery sits at the top (base, http, errors, pagination, writes, simulator); each
sub-package that exports a `PROVIDER` is one provider, found by freshd.connectors.registry.
"""
