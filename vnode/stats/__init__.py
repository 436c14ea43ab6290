"""Resource stats from the runtime (CRI) and the host, without cAdvisor: the numbers behind
``/stats/summary``, ``/metrics/resource`` and the node's pressure conditions."""
