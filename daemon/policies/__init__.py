"""Per-connection policies: pure decisions the actor and the sweeps consult."""
