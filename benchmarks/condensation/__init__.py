"""Condensation benchmark: FMNIST, IPC 1/10/50, dm/gm/real/dp-dm, plus the federated case."""
