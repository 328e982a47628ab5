"""The live side of an object: its evaluation cycle, the scheduler that drives it, and the
executors that carry out admitted actions (through a durable outbox)."""
