"""Small helpers shared by every process of the tree (no heavy imports here)."""
