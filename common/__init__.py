"""fedcredit's Flower-free core: config, the wire contract, errors, outputs, a partner's round,
data, learning, privacy and vertical mode. Plain Python/torch/numpy; nothing here imports flwr."""
