"""flatnet-lighthouse: node registry, subnet leases, hole-punch coordination."""
