"""Model code: pipelines and their parts; no IO beyond loading weights."""
