"""surge on Ray: the engine inside Ray Data workers under one shared limit."""
