"""Liveness, readiness and startup probes, as kubelet runs them (see ``manager``)."""
