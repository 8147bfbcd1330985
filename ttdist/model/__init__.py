"""Llama on a mesh: sharding layout, modules, weights, runner (numpy + Backend ops only)."""
