"""Kubernetes (KubeRay) side of the studio API: the deployment profile, the manifests and
the Grafana dashboard generated from serve_config.yaml (``python -m cluster.kuberay generate``)."""
