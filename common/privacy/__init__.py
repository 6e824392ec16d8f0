"""Privacy: accounting, the partner-owned budget, signed hash-chained ledgers and receipts, the
auditor's independent verification (`audit`), Ed25519/SHA-256 helpers and the noise-seed policy."""
