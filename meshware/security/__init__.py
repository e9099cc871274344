"""The secure channel: SPIFFE identities (:mod:`~meshware.security.identity`), the built-in CA
(:mod:`~meshware.security.ca`), workload credentials and TLS contexts
(:mod:`~meshware.security.tls`) and the verified peer of a request
(:mod:`~meshware.security.peer`)."""
