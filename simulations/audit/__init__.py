"""`fedcredit audit verify/report`: the auditor's command line over `common.privacy.audit`, and
the self-contained HTML report."""
