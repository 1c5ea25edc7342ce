"""Settings split by environment: base (shared, reads the environment), local, test, production."""
