"""Application wiring: settings read once, the concrete backends, the campaign's lease."""
