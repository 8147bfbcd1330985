"""ttdist client."""
