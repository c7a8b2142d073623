"""The HTTP face of the server: parses requests, calls services, renders responses."""
