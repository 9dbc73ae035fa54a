"""The composition root: the engine, the application wiring, the Prefect adapter and the CLI,
layered in that order (each may import the ones before it, never after; `lint-imports`)."""
