"""Condensation benchmark: FMNIST, IPC 1/10/50, dm/gm/real/dp-dm, dp-dos at IPC 10, plus the federated case."""
