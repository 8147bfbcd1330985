"""HTTP dashboard: live page, JSON status, Prometheus metrics."""
