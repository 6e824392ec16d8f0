"""The coordinator's Flower ServerApp: validated weighted FedAvg, secure aggregation (SecAgg+),
and the vertical relay. Calls only `common/`."""
