"""fedcredit core: schema, data, model, training, privacy accounting, metrics. No Flower here."""
