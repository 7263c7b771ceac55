"""Family deployments: plain classes bound by ``ingress.wiring.builder`` from config."""
