"""(in progress) guidance networks."""
