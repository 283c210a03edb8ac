"""One module per CLI command. Only click is imported at module level (keeps `hrdeploy --help` fast)."""
