"""`flexeval speed`: timing, FLOP and byte accounting, device ceilings, end-to-end rows."""
