"""Object storage for generated files (and, later, task records)."""
