"""Small shared helpers (testing tolerances, memory accounting)."""
