"""tortie-node: the per-node daemon (CNI socket, metrics, Node registration)."""
