"""Data: schemas (declared, data-independent encoding), CSV tables and their train/test splits,
the bundled scenarios, and the bundled CSVs with their schema TOMLs and provenance."""
