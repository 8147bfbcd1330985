"""ttdist router."""
