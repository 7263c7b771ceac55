"""The public REST contract: FastAPI ingress deployment and its builder."""
