"""The partners' Flower ClientApp: horizontal train/evaluate handlers, the SecAgg+ mod, and the
vertical party handlers. Converts Flower records to plain values and calls only `common/`."""
