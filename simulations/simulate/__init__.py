"""`fedcredit simulate`: Flower's Simulation Engine, the horizontal driver with its baselines,
the vertical driver, and the reports and plots."""
