"""ttdist runtime."""
