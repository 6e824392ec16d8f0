"""fedcredit coordinator ServerApp (Flower)."""
