"""The admin console and the Envoy-style operator endpoints (issue #16).

One job per module: ``stats`` reads the core's counters, ``traffic`` turns samples of them into rates and
latency quantiles per edge, ``certs`` describes certificates (never keys), ``errors`` keeps the last error log
lines, ``views`` builds what each endpoint and page shows, ``ops`` holds the maintenance state (health check
failed, listeners drained) and its loopback guard, ``routes`` wires it all on the admin port (gateway/admin.py).
"""
