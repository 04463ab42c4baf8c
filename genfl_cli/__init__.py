"""The operator's commands (genfl-run, genfl-sweep, genfl-report, genfl-generate, genfl-deploy-run,
genfl-certs, genfl-export-partitions), one module each. They import the layers below (server_app's
config and results, generation, genfl_torch); nothing below imports them."""
