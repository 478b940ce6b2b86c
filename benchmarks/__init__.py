"""Side-by-side benchmarks of meshproxy against Envoy, nginx and HAProxy (never run by pytest)."""
