"""Stand-in for ``python-ursa`` (whose libursa cannot be had here): Plenum imports
``ursa.bls`` and ``ursa.indy_error``; the ``indy-bls`` wheel implements the same BLS
scheme (the one python-ursa wrapped) with the same class names, so these two modules
re-export it under the names Plenum expects."""
