"""Two-way sync between two connections (docs/TWO-WAY.md).

    mapping.py       pairs and their entities: common fields, directions, rules (the model)
    transforms.py    the named transforms a field reads and writes its values through
    declarations.py  the shipped defaults; a [pairs.NAME] declaration checked into a Pair
    merge.py         the three-way merge of one linked pair of records against their agreed base
    plan.py          a run's queue: which pairs of records need work (links, natural keys, creates)
    runner.py        one run: bring both sides up to date, plan, write in batches, pause/cancel
    writepath.py     intent, provider call, outcome: how runs and resolutions write to a provider
    settle.py        a batch's outcome in one transaction: writes, links, items, conflicts
    service.py       the runs of this daemon: queued runs started under the per-tenant caps,
                     resolutions, the per-tenant write rate
Its tables (pairs, links, twoway_runs, twoway_items, twoway_writes, conflicts) are in
freshd.store.twoway.  Provider writes go through the connection's actor (messages.Write), so
they share its rate limits, breaker and token refresh.
"""
