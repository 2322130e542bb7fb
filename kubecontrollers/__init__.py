"""tortie-kube-controllers: mirrors the Kubernetes API into the datastore.

See docs/kubernetes.md.
"""
