"""Soak test of scheduler-host (`make soak`, or `python -m soak --seconds 60`).

A bounded mixed load (200 installs; create, update, delete, list, get) through real
`scheduler-host serve` processes with the dispatcher firing against a Runner stand-in, on a
throwaway PostgreSQL database, for a configurable time. Then it checks the invariants (no install
above its quota, no occurrence fired twice, run records reconcile with the Runner's log, server
memory growth under 10% after warm-up, no unexpected status code), prints the figures, and exits
non-zero when an invariant fails.
"""
