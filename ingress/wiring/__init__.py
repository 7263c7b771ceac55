"""Wiring: the app registry, settings and secrets, the Serve builder and deployment, the local launcher."""
