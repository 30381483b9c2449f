"""Senses: projections over the event store (run state, metrics, narratives, reports)."""
