"""The application layer: one place for each use case (starting a run, ...) between the domain packages and
the `esper` command, which parses and prints. Validation, run ids and the resolution of configs live here."""
