"""Family deployments: one module per kind of model family, on the base in ``base.py``."""
