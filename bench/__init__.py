"""`make bench`: the load scenarios of PERFORMANCE.md, the gateway measured against the bare upstream."""
