"""Per-replica serving: scheduler, page pool, requests, detokenizer (plain Python)."""
