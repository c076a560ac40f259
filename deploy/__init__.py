"""Deployment files (image, compose, Kubernetes, dashboards) and the small Python that goes with them: the
manifest loader and invariant checks (``deploy.checks``), the web pod's readiness probe (``deploy.readiness``)
and the capacity and cost model (``deploy.costmodel``)."""
