"""The Prefect adapter: the campaign flow, approvals as paused flow runs, the local API server.
Thin: it calls the engine."""
