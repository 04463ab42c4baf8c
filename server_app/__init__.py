"""The Flower ServerApp (wiring: config -> strategy -> rounds -> results) and the `genfl-run` launcher."""
