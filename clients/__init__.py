"""fedcredit partner ClientApp (Flower)."""
