"""Offline tooling, not the service: the local dev cluster (devcluster.py) and the
analysis of workload traces (analysis/). Nothing in the daemon imports from here."""
