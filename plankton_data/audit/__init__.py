"""Trust and inspect what was written: ``verify`` (every byte against its index and manifest), ``stats``
(counts and pixel statistics from the manifests) and ``preview`` (contact sheets)."""
