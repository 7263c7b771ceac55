"""Async tasks: the submit/status/cancel service, the coordinator that dispatches them, webhooks."""
