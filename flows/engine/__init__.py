"""The loop itself (suggest → decide → dispatch → outcome) against Protocols for the event log,
the device hub, the optimizer and the clock. No Prefect, broker or database client here."""
