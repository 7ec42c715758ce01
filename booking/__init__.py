"""booking: seats for hot evening classes, Redis as the gate and Postgres as the ledger."""
