"""Family deployments: plain classes bound by ``ingress.builder`` from config."""
