"""Bounds on what a provider may make a connection do: wait, buffer, or believe about time.

* ``request_deadline``: one request, from sending to the last byte of its body, whatever the
  provider trickles (per-read timeouts alone let a byte every few seconds go on for ever).
* ``max_retry_after``: a Retry-After longer than this is not waited out; the request fails
  ("provider asked to wait N s") and the breaker and staleness policies take over.
* ``max_response_bytes``: a body, as received and once decompressed, is checked as bytes arrive
  and refused past this size, so an endless body or a gzip bomb cannot take the memory.
* ``max_clock_skew``: a provider's ``Date`` further than this from our clock never bounds a
  cursor (our clock does): one response dated 2099 must not blind incremental syncs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    request_deadline: float = 300.0
    max_retry_after: float = 900.0
    max_response_bytes: int = 32 * 1024 * 1024
    max_clock_skew: float = 300.0
