"""Replica pools that follow their load: the ``autoscale:`` config, the decision, its signals
and the cold-start timings of the replicas it starts."""
