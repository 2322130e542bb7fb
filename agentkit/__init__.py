"""What every Tortie daemon and agent uses: the agent protocol and supervisor, metrics, the
/metrics + health HTTP server, logging, back-off, network namespaces and sysctls, stopping
processes.  Imports no other Tortie package but ``datastore``."""
