"""Process runtime: multi-host init, device mesh, logical-axis sharding, logging, seeding."""
