"""Real deployment: the federation's PKI (`fedcredit federation init`), every command line of a
deployment, and the local TLS federation on loopback (`fedcredit federation demo`)."""
