"""HTTP views served by the worker's web server (Faust web, aiohttp)."""
