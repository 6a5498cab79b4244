"""Protocol cores: pure state machines, no I/O."""
